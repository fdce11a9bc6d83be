"""Convolution kernels vs torch.nn.functional.conv2d, same process, same inputs.

    python -m pytest bench/test_bench_conv.py                         # full run
    python -m pytest bench/test_bench_conv.py -k mnist-conv2          # one layer
    python -m pytest bench/test_bench_conv.py --benchmark-disable     # smoke test

One pytest-benchmark group per layer and pass: "mnist-conv2 forward" and "mnist-conv2
forward+backward" are separate groups, so every row of a group does the same work and the
table's relative column reads directly as ratios (to PyTorch, to the NumPy reference, ...).
Each group holds every algorithm x backend (cupy only where CuPy and a GPU exist) and
PyTorch. extra_info carries layer, pass ("forward" / "forward+backward"), algo, backend,
engine, device, dtype, flops, gflops (from the median), workspace_bytes and the session's
sgemm_gflops (NumPy's sgemm here, measured in the same run: a yardstick, not a ceiling).

Rounds adapt to the kernel's speed (bench/common.py: about 0.6 s of timing each, 2 to 20
rounds, after a warm-up call that also triggers Numba compilation). The direct NumPy
reference (Python loops over output pixels) is excluded from the "wide" layer: it takes tens
of seconds there. An algorithm is benchmarked on the layers it can compute
(kernels.supports): winograd, F(2x2, 3x3), on 3x3 stride-1 layers only, which every layer
here is; a layer added with another kernel or stride is skipped for it, with the reason.
"""
import pytest

from bench.common import LAYERS, make_inputs, pass_flops, rate, record, run_timed
from minigrad import kernels

torch = pytest.importorskip("torch")

PASSES = ("forward", "forward+backward")
SKIP = {("wide", "direct", "numpy")}


def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


BACKENDS = ["numpy", "numba"] + (["cupy"] if _gpu_available() else [])


def _record(benchmark, *, layer, pass_, algo, backend, engine, ws, sgemm):
    flops = pass_flops(layer, pass_)
    record(benchmark, layer=layer, **{"pass": pass_}, algo=algo, backend=backend,
           engine=engine, device="cuda" if backend == "cupy" else "cpu", dtype="float32",
           flops=flops, workspace_bytes=ws, sgemm_gflops=round(sgemm, 1),
           gflops=rate(benchmark, flops, 1e-9))


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_conv(benchmark, sgemm_gflops, layer, algo, backend, pass_):
    if (layer, algo, backend) in SKIP:
        pytest.skip("direct NumPy reference is too slow for this layer (tens of seconds)")
    x_shape, w_shape, stride, padding = LAYERS[layer]
    if not kernels.supports(algo, w_shape, stride):
        pytest.skip(f"{algo}: 3x3 stride 1 only (layer {layer}: kernel "
                    f"{w_shape[2]}x{w_shape[3]}, stride {stride})")
    benchmark.group = f"{layer} {pass_}"
    x, w, dy = make_inputs(layer)
    sync = lambda: None  # noqa: E731
    if backend == "cupy":
        import cupy

        x, w, dy = cupy.asarray(x), cupy.asarray(w), cupy.asarray(dy)
        sync = cupy.cuda.Device().synchronize

    def forward():
        y = kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend=backend)
        sync()
        return y

    def forward_backward():
        kernels.conv2d_forward(x, w, stride, padding, algo=algo, backend=backend)
        g = kernels.conv2d_backward(dy, x, w, stride, padding, algo=algo, backend=backend)
        sync()
        return g

    run_timed(benchmark, forward if pass_ == "forward" else forward_backward)
    ws = kernels.workspace_bytes(algo, x_shape, w_shape, stride, padding)
    _record(benchmark, layer=layer, pass_=pass_, algo=algo, backend=backend,
            engine="minigrad", ws=ws, sgemm=sgemm_gflops)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_torch(benchmark, sgemm_gflops, layer, pass_):
    benchmark.group = f"{layer} {pass_}"
    x_shape, w_shape, stride, padding = LAYERS[layer]
    x, w, dy = (torch.from_numpy(a) for a in make_inputs(layer))
    x.requires_grad_(True)
    w.requires_grad_(True)
    conv = torch.nn.functional.conv2d

    def forward():
        with torch.no_grad():
            return conv(x, w, stride=stride, padding=padding)

    def forward_backward():
        y = conv(x, w, stride=stride, padding=padding)
        return torch.autograd.grad(y, (x, w), dy)

    run_timed(benchmark, forward if pass_ == "forward" else forward_backward)
    _record(benchmark, layer=layer, pass_=pass_, algo="torch", backend="torch",
            engine="pytorch", ws=None, sgemm=sgemm_gflops)  # its workspace is unknown
