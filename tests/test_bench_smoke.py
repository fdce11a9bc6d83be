"""The bench suite works with pytest-benchmark's own tools: a tiny timed run writes a JSON whose
groups compare like with like and whose machine_info says what ran, `minigrad plot` reads
it, and `--benchmark-disable` runs the suites without crashing.

The whole suite's smoke run is CI's job (`python -m pytest bench --benchmark-disable`); here
a few benchmarks stand for it, so the default test run stays quick. No timing is asserted.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONV = "bench/test_bench_conv.py"


def _pytest(*args, timeout=300):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("bench") / "results.json"
    r = _pytest(f"{CONV}::test_conv[mnist-conv1-im2col-numba-forward]",
                f"{CONV}::test_conv[mnist-conv1-kn2row-numpy-forward]",
                f"{CONV}::test_torch[mnist-conv1-forward]",
                f"{CONV}::test_torch[mnist-conv1-forward+backward]",
                f"--benchmark-json={out}", "--benchmark-min-rounds=1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_groups_hold_one_layer_and_one_pass(results):
    doc = json.loads(results.read_text())
    groups = {}
    for b in doc["benchmarks"]:
        groups.setdefault(b["group"], []).append(b["extra_info"])
    assert set(groups) == {"mnist-conv1 forward", "mnist-conv1 forward+backward"}
    for group, extras in groups.items():
        layer, pass_ = group.split(" ")
        assert all(e["layer"] == layer and e["pass"] == pass_ for e in extras)
    fwd = groups["mnist-conv1 forward"]
    assert {(e["engine"], e["algo"], e["backend"]) for e in fwd} == {
        ("minigrad", "im2col", "numba"), ("minigrad", "kn2row", "numpy"),
        ("pytorch", "torch", "torch")}
    assert all(e["gflops"] > 0 and e["sgemm_gflops"] > 0 for e in fwd)


def test_machine_info_says_what_ran(results):
    info = json.loads(results.read_text())["machine_info"]["minigrad"]
    import numba


    assert info["numba"] == numba.__version__ and info["torch"]
    assert info["numba_threads"] >= 1
    assert info["numba_threading_layer"] in ("tbb", "omp", "workqueue")
    assert info["gemm"]["float32"] and info["gemm"]["mode"] in ("auto", "blas", "numba")
    # every BLAS in the benchmark process (PyTorch may load its own), NumPy's marked. Asked
    # of a fresh process: this one may have loaded other BLAS libraries (torch, an earlier
    # test) or limited their threads, which would say nothing about the benchmark's.
    fresh = subprocess.run(
        [sys.executable, "-c", "import json; from minigrad import kernels; "
         "print(json.dumps(kernels.blas_info()))"], capture_output=True, text=True, check=True)
    numpy_blas = [(lib, v, k) for lib, v, k, _ in json.loads(fresh.stdout)]
    recorded = [(b["library"], b["version"], b["kernel"]) for b in info["blas"] if b["numpy"]]
    assert numpy_blas and all(b in recorded for b in numpy_blas), (numpy_blas, info["blas"])
    assert isinstance(info["avx512"], bool) and info["cpu_model"]
    git = info["git"]
    if git["commit"] is not None:                      # run from a git checkout
        assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool)


def test_minigrad_plot_reads_the_results(results, tmp_path):
    from minigrad.tools import plot

    records, info = plot.read(results)
    fig = plot.fig_speedup(records, info)
    assert "numba backend vs PyTorch" in fig.axes[0].get_title()
    assert info["blas"]                                # from machine_info.minigrad.blas


def test_disabled_benchmarks_run_once_without_crashing():
    """--benchmark-disable leaves benchmark.stats None: the suites that derived rates from
    it (loader, MNIST step) crashed with an AttributeError there."""
    from minigrad.data import mnist

    try:
        mnist.load_mnist()
    except Exception as e:                             # no MNIST here: nothing to smoke-test
        pytest.skip(f"needs the MNIST files: {type(e).__name__}")
    pytest.importorskip("torch")
    r = _pytest("bench/test_bench_loader.py::test_loader_throughput[2]",
                "bench/test_bench_mnist.py::test_mnist_train_step[pytorch]",
                "bench/test_bench_mnist.py::test_mnist_train_step[minigrad-im2col]",
                f"{CONV}::test_conv[mnist-conv2-kn2col-numba-forward+backward]",
                "--benchmark-disable")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "4 passed" in r.stdout
