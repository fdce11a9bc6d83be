"""Checkpoint and resume for the split strategies (model parallel, tensor slicing).

Both write the single-worker layout after every epoch: the whole weights (model parallel
joins every worker's filters) and the whole optimizer state (model parallel joins every
share's momentum). A run of 2 epochs straight and 1 epoch + a resumed epoch end bit for bit
alike with the same workers (the thread collectives add in rank order, and an epoch's
batches depend on (seed, epoch) only); with another number of workers the checkpoint is
re-split and the run ends alike up to the order of float sums. A worker that fails stops
the run with DistributedRunFailed naming the rank and the checkpoint; resuming from it
loses nothing.
"""
import json

import numpy as np
import pytest
from test_model_parallel import fake_mnist

from minigrad import cli, nn
from minigrad.checkpoint import CheckpointError, CheckpointMismatch, read_checkpoint
from minigrad.data.transforms import mnist_normalize
from minigrad.distributed import DistributedRunFailed, train_distributed
from minigrad.distributed.common import Faults
from minigrad.models import MnistCNN
from minigrad.random import manual_seed

SPLIT = ("model-parallel", "tensor-slicing")
N_TRAIN, BATCH = 256, 32
STEPS_PER_EPOCH = N_TRAIN // BATCH


@pytest.fixture(scope="module")
def data():
    return fake_mnist(N_TRAIN), fake_mnist(64, seed=1)


def run(data, strategy, epochs, seed_model=0, workers=2, **kw):
    train, test = data
    manual_seed(seed_model)
    model = MnistCNN()
    opts = dict(workers=workers, epochs=epochs, batch_size=BATCH, lr=0.05, optimizer="sgd",
                momentum=0.9, transform=mnist_normalize, task="mnist")
    opts.update(kw)
    return model, train_distributed(strategy, model, train, test, **opts)


def params(model):
    return [p.data.copy() for p in model.parameters()]


@pytest.fixture(scope="module")
def straight(data):
    """Each strategy's 2-epoch run on 2 workers, straight through."""
    return {s: run(data, s, 2) for s in SPLIT}


@pytest.mark.parametrize("strategy", SPLIT)
def test_resumed_run_equals_an_uninterrupted_one(data, straight, strategy, tmp_path):
    model_straight, s_straight = straight[strategy]
    ckpt = tmp_path / "run.npz"
    first, s1 = run(data, strategy, 1, save=ckpt)
    assert s1["checkpoint"] == ckpt
    model_state, optim_state, meta = read_checkpoint(ckpt)
    assert meta["epoch"] == 1 and meta["strategy"] == strategy and meta["ranks"] == 2
    assert meta["optimizer"] == "sgd" and meta["task"] == "mnist"
    assert len(meta["data_order"]) == N_TRAIN          # the next epoch's permutation
    # the single-worker layout: whole weights and whole momentum buffers, whatever the split
    whole = dict(first.named_parameters())
    assert set(model_state) == set(whole)
    for name, p in whole.items():
        np.testing.assert_array_equal(model_state[name], p.data)
    for i, p in enumerate(first.parameters()):
        assert optim_state[f"{i}.momentum_buffer"].shape == p.shape
    assert np.any(optim_state["0.momentum_buffer"] != 0)

    # a different initial model: everything must come from the checkpoint
    resumed, s2 = run(data, strategy, 2, seed_model=5, resume=ckpt, save=ckpt)
    for p, q in zip(params(resumed), params(model_straight), strict=True):
        np.testing.assert_array_equal(p, q)
    assert s2["test_accuracy"] == s_straight["test_accuracy"]
    assert s2["resumed_from_epoch"] == 1 and s2["epochs_run"] == 1
    assert s2["steps"] == STEPS_PER_EPOCH                # the steps this run took
    assert read_checkpoint(ckpt)[2]["epoch"] == 2


@pytest.mark.parametrize("strategy", SPLIT)
def test_a_failed_worker_stops_the_run_and_resume_loses_nothing(data, straight, strategy,
                                                                 tmp_path):
    model_straight, s_straight = straight[strategy]
    ckpt = tmp_path / "run.npz"
    with pytest.raises(DistributedRunFailed) as info:
        run(data, strategy, 2, save=ckpt, faults=Faults(die={1: STEPS_PER_EPOCH + 3}))
    text = str(info.value)
    assert f"{strategy}: rank 1 of 2 failed (WorkerFailure" in text
    assert "needs every rank at every step" in text
    assert f"holds epoch 1: resume with --resume {ckpt}" in text
    assert read_checkpoint(ckpt)[2]["epoch"] == 1    # the epoch in progress was not written
    resumed, s2 = run(data, strategy, 2, resume=ckpt)
    for p, q in zip(params(resumed), params(model_straight), strict=True):
        np.testing.assert_array_equal(p, q)
    assert s2["test_accuracy"] == s_straight["test_accuracy"]


def test_a_failure_before_any_checkpoint_says_so(data):
    with pytest.raises(DistributedRunFailed, match="no checkpoint was being written"):
        run(data, "model-parallel", 1, faults=Faults(die={0: 2}))


@pytest.mark.parametrize("strategy,workers", [("model-parallel", 3), ("model-parallel", 1),
                                              ("tensor-slicing", 3)])
def test_resume_with_another_number_of_workers_re_splits(data, straight, strategy, workers,
                                                         tmp_path):
    """Written by 2 workers, resumed by 1 or 3: the shares (and their momentum) are cut
    anew; only the order of float sums in the collectives differs from the straight run."""
    model_straight, _ = straight[strategy]
    ckpt = tmp_path / "run.npz"
    run(data, strategy, 1, save=ckpt)
    lines = []
    resumed, s2 = run(data, strategy, 2, seed_model=5, workers=workers, resume=ckpt,
                      log=lines.append)
    assert s2["workers"] == workers and s2["resumed_from_epoch"] == 1
    assert f"written by 2 workers, re-split over {workers}" in "\n".join(lines)
    for (name, p), q in zip(resumed.named_parameters(), params(model_straight), strict=True):
        np.testing.assert_allclose(p.data, q, rtol=1e-3, atol=1e-5, err_msg=name)


def test_resume_refuses_a_checkpoint_of_another_run(data, tmp_path):
    ckpt = tmp_path / "run.npz"
    run(data, "model-parallel", 1, save=ckpt)
    with pytest.raises(CheckpointMismatch, match="--strategy model-parallel, this run has "
                                                 "--strategy tensor-slicing"):
        run(data, "tensor-slicing", 2, resume=ckpt)
    with pytest.raises(CheckpointMismatch, match="--seed 0, this run has --seed 3"):
        run(data, "model-parallel", 2, resume=ckpt, seed=3)
    with pytest.raises(CheckpointMismatch, match="--optimizer sgd, this run has --optimizer "
                                                 "adam"):
        run(data, "model-parallel", 2, resume=ckpt, optimizer="adam")
    with pytest.raises(CheckpointError, match="does not exist"):
        run(data, "model-parallel", 2, resume=tmp_path / "missing.npz")
    manual_seed(0)  # the same meta, another network: its weights do not fit
    other = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(1),
                          nn.Linear(4 * 28 * 28, 10))
    train, test = data
    with pytest.raises(CheckpointMismatch, match="does not fit this model"):
        train_distributed("model-parallel", other, train, test, workers=2, epochs=2,
                          batch_size=BATCH, optimizer="sgd", transform=mnist_normalize,
                          task="mnist", resume=ckpt)


def test_adam_state_is_split_and_joined(data, tmp_path):
    """Adam's moments are per element (split with the filters), its step count a scalar."""
    model_straight, _ = run(data, "model-parallel", 2, optimizer="adam", lr=1e-3)
    ckpt = tmp_path / "adam.npz"
    run(data, "model-parallel", 1, optimizer="adam", lr=1e-3, save=ckpt)
    _, optim_state, _ = read_checkpoint(ckpt)
    assert optim_state["0.step"] == STEPS_PER_EPOCH
    assert optim_state["4.exp_avg"].shape == (128, 3136)  # fc1, joined from both workers
    resumed, _ = run(data, "model-parallel", 2, optimizer="adam", lr=1e-3, resume=ckpt)
    for p, q in zip(params(resumed), params(model_straight), strict=True):
        np.testing.assert_array_equal(p, q)


def test_save_and_resume_from_the_command_line(tmp_path, capsys):
    """iris's MLP split by output features: --save, then --resume for the last epoch."""
    ckpt = tmp_path / "mp.npz"
    argv = ["iris", "--optimizer", "sgd", "--lr", "0.1", "--strategy", "model-parallel",
            "--workers", "2", "--json"]
    assert cli.main(["train", *argv, "--epochs", "3"]) == 0
    straight = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(["train", *argv, "--epochs", "2", "--save", str(ckpt)]) == 0
    capsys.readouterr()
    assert read_checkpoint(ckpt)[2]["epoch"] == 2
    assert cli.main(["train", *argv, "--epochs", "3", "--resume", str(ckpt)]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == 1
    assert resumed["test_accuracy"] == straight["test_accuracy"]


# ------------------------------------------------------------------------ under mpiexec
def test_mpi_a_killed_rank_ends_the_job_and_resume_matches_a_run_through(tmp_path):
    """model parallel over 2 MPI processes (the blobs MLP of mpi_job.py): rank 1 is
    SIGKILLed in epoch 2; the job ends, the epoch-1 checkpoint is whole, and resuming from
    it ends with the parameters of a run straight through."""
    from test_mpi_jobs import _skip_reason, mpiexec, result

    if _skip_reason() is not None:
        pytest.skip(_skip_reason())
    strategy = "model-parallel"
    ran, killed, resumed = (tmp_path / d for d in ("ran", "killed", "resumed"))
    for d in (ran, killed, resumed):
        d.mkdir()
    ckpt = str(tmp_path / "{strategy}.npz")
    code, log = mpiexec(2, "--strategies", strategy, "--epochs", "2", "--out", ran)
    assert code == 0, log
    # 1000 samples in batches of 32: 32 steps per epoch; rank 1 dies at its 6th of epoch 2
    code, log = mpiexec(2, "--strategies", strategy, "--epochs", "2", "--out", killed,
                        "--save", ckpt, "--kill", "1:37", timeout=120)
    assert code != 0, log
    pid = next(line.split("rank 1 = pid ")[1].split()[0] for line in log.splitlines()
               if "rank 1 = pid " in line)
    assert f"PID {pid} " in log, log
    assert not (killed / f"{strategy}.npz").exists()
    assert read_checkpoint(ckpt.format(strategy=strategy))[2]["epoch"] == 1
    code, log = mpiexec(2, "--strategies", strategy, "--epochs", "2", "--out", resumed,
                        "--resume", ckpt)
    assert code == 0, log
    a, b = result(ran, strategy), result(resumed, strategy)
    assert int(b["resumed_from_epoch"]) == 1
    np.testing.assert_array_equal(a["params"], b["params"])
    assert float(a["test_accuracy"]) == float(b["test_accuracy"])
