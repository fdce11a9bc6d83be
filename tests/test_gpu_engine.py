"""The engine on a GPU (marked `gpu`: skipped where CuPy or a CUDA device is missing).

The layer checks (F.conv2d and F.max_pool2d through autograd, against tests/oracle.py) also
run on the CPU, as the control that shows the check itself works on any machine.
"""
import numpy as np
import oracle
import pytest

import minigrad as mg
from minigrad import functional as F
from minigrad import kernels
from minigrad.models import IrisMLP, MnistCNN
from minigrad.optim import SGD, Adam

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
LAYER_CASES = oracle.CUDA_CASES[::3]
WINOGRAD_CASES = [oracle.ConvCase.of(2, 3, 7, 6, 4, 3, 3, 1, 1),   # odd Ho: a cropped block
                  oracle.ConvCase.of(1, 2, 8, 8, 3, 3, 3, 1, 0)]


def _train(model, opt, batches, device):
    losses = []
    model.to(device)
    for x, y in batches:
        xt = mg.Tensor(x).to(device)
        yt = mg.Tensor(y).to(device).data
        loss = F.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    return np.array(losses), model.state_dict()


@pytest.mark.gpu
@pytest.mark.parametrize("make_opt", [lambda p: Adam(p, lr=1e-3),
                                      lambda p: SGD(p, lr=0.05, momentum=0.9)])
@pytest.mark.parametrize("make_model,shape", [(IrisMLP, (16, 4)), (MnistCNN, (8, 1, 28, 28))])
def test_training_steps_on_gpu_match_cpu(make_model, shape, make_opt):
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal(shape).astype(np.float32),
                rng.integers(0, 3, shape[0])) for _ in range(4)]
    mg.manual_seed(0)
    cpu_model = make_model()
    gpu_model = make_model().load_state_dict(cpu_model.state_dict())
    cpu_losses, cpu_state = _train(cpu_model, make_opt(cpu_model.parameters()), batches, "cpu")
    gpu_losses, gpu_state = _train(gpu_model, make_opt(gpu_model.parameters()), batches, "cuda")
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4, atol=1e-5)
    for k in cpu_state:
        np.testing.assert_allclose(gpu_state[k], cpu_state[k], rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.gpu
def test_tensor_round_trip_and_gradient_flow():
    x = mg.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = x.to("cuda")
    assert y.device == "cuda" and x.device == "cpu"
    (y * y).sum().backward()
    assert x.grad is not None and isinstance(x.grad, np.ndarray)
    np.testing.assert_allclose(x.grad, 2 * x.data)
    np.testing.assert_array_equal(y.to("cpu").data, x.data)


@pytest.mark.gpu
def test_mixing_devices_names_both():
    a = mg.Tensor(np.ones((2, 2), np.float32))
    b = mg.Tensor(np.ones((2, 2), np.float32)).to("cuda")
    for op in (lambda: a + b, lambda: b * a, lambda: a @ b):
        with pytest.raises(RuntimeError, match=r"different devices: (cpu|cuda).*(cuda|cpu)"):
            op()
    layer = mg.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="linear: tensors are on different devices"):
        layer(b)


def engine_conv(algo, device):
    """F.conv2d on `device` in oracle.check_conv's calling convention: the leaves live on the
    CPU and are moved with .to(device), so the gradients also flow back through the copies."""
    def run(x, w, stride, padding):
        xt, wt = mg.Tensor(x, requires_grad=True), mg.Tensor(w, requires_grad=True)
        y = F.conv2d(xt.to(device), wt.to(device), None, stride, padding, algo=algo)
        assert y.device == device
        return xt, wt, y

    def forward(x, w, stride, padding):
        return run(x, w, stride, padding)[2].data

    def backward(dy, x, w, stride, padding):
        xt, wt, y = run(x, w, stride, padding)
        y.backward(mg.Tensor(dy).to(device).data)
        return xt.grad, wt.grad

    return forward, backward


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", LAYER_CASES, ids=oracle.ids(LAYER_CASES))
@pytest.mark.parametrize("algo", kernels.ALGORITHMS)
def test_conv2d_layer_matches_torch(algo, case, dtype, device):
    if not kernels.supports(algo, case.w_shape, case.stride):
        pytest.skip(f"{algo}: 3x3 stride 1 only")
    oracle.check_conv(*engine_conv(algo, device), *case.data(dtype), case.stride, case.padding,
                      what=f"F.conv2d {algo} on {device}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=oracle.ids(WINOGRAD_CASES))
def test_winograd_layer_matches_torch(case, dtype, device):
    """LAYER_CASES has no 3x3 stride-1 layer, the only kind winograd computes."""
    oracle.check_conv(*engine_conv("winograd", device), *case.data(dtype), case.stride,
                      case.padding, what=f"F.conv2d winograd on {device}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", oracle.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", oracle.POOL_CASES, ids=oracle.ids(oracle.POOL_CASES))
def test_max_pool2d_layer_matches_torch(case, dtype, device):
    x, dy = case.data(dtype)
    xt = mg.Tensor(x, requires_grad=True)
    y = F.max_pool2d(xt.to(device), case.kernel, case.stride)
    assert y.device == device
    y.backward(mg.Tensor(dy).to(device).data)
    ty, _, tdx = oracle.torch_pool(x, dy, case.kernel, case.stride)
    tag = f"F.max_pool2d on {device}, {case.id} {np.dtype(dtype)}"
    y = y.to("cpu").data
    assert y.dtype == dtype, f"y {tag}: dtype {y.dtype}"
    np.testing.assert_array_equal(y, ty, err_msg=f"y vs torch, {tag}")
    oracle.assert_close(xt.grad, tdx, f"dx vs torch, {tag}", dtype)
