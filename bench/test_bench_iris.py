"""A full iris training run (100 epochs, batch 64, Adam 1e-3, 4 loader threads), minigrad vs
PyTorch in one session: same initial weights, same batches from minigrad's DataLoader.

    pytest bench/test_bench_iris.py
"""
import pytest

import minigrad as mg
from minigrad.data.iris import load_iris
from minigrad.data.loader import DataLoader
from minigrad.models import IrisMLP
from minigrad.optim import Adam
from minigrad.train import fit

torch = pytest.importorskip("torch")
ref = pytest.importorskip("bench.torch_reference")

EPOCHS, BATCH, LR, WORKERS = 100, 64, 1e-3, 4


@pytest.fixture(scope="module")
def iris():
    return load_iris()


def _minigrad_run(data, init):
    X, y, Xt, yt = data
    model = IrisMLP().load_state_dict(init.state_dict())
    opt = Adam(model.parameters(), lr=LR)
    with DataLoader((X, y), batch_size=BATCH, seed=0, num_workers=WORKERS) as loader:
        return fit(model, opt, loader, (Xt, yt), EPOCHS, log=lambda s: None)


def _torch_run(data, init):
    X, y, Xt, yt = data
    model = ref.copy_weights(ref.TorchIrisMLP(), init)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    with DataLoader((X, y), batch_size=BATCH, seed=0, num_workers=WORKERS) as loader:
        return ref.fit(model, opt, loader, (Xt, yt), EPOCHS)


@pytest.mark.benchmark(group="iris-train-100-epochs")
@pytest.mark.parametrize("engine", ["minigrad", "pytorch"])
def test_iris_full_run(benchmark, iris, engine):
    mg.manual_seed(0)
    init = IrisMLP()
    run = _minigrad_run if engine == "minigrad" else _torch_run
    result = benchmark.pedantic(run, args=(iris, init), rounds=10, warmup_rounds=1)
    benchmark.extra_info.update(engine=engine, task="iris", epochs=EPOCHS, batch_size=BATCH,
                                test_accuracy=result["test_accuracy"], device="cpu")
    assert result["test_accuracy"] > 0.9
