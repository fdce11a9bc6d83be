"""Checkpoint and resume for every strategy (threads), and what a failed rank leaves behind.

A run of 2 epochs straight and a run of 1 epoch + a resumed 1 epoch must end with the same
parameters: bit for bit for sync and DGC (the thread collectives add in rank order, and an
epoch's batches and DGC's samples depend on (seed, epoch) only), within noise for async
and Hogwild, whose interleaving of threads differs run to run.
"""
import numpy as np
import pytest
from dist_helpers import mlp

from minigrad.checkpoint import CheckpointError, read_checkpoint
from minigrad.distributed import DistributedRunFailed, train_distributed
from minigrad.distributed.common import Faults

DGC_OPTS = dict(dgc_warmup_epochs=1.5)  # the warm-up spans the resume point


def run(task, strategy, epochs, seed_model=0, **kw):
    train, test = task
    model = mlp(hidden=64, seed=seed_model)
    opts = dict(workers=3, epochs=epochs, batch_size=32, lr=0.05, optimizer="sgd")
    if strategy == "dgc":
        opts.update(DGC_OPTS)
    opts.update(kw)
    return model, train_distributed(strategy, model, train, test, **opts)


def params(model):
    return [p.data.copy() for p in model.parameters()]


@pytest.mark.parametrize("strategy", ["sync", "dgc"])
def test_resumed_run_equals_an_uninterrupted_one(task, strategy, tmp_path):
    straight, s_straight = run(task, strategy, 3)
    ckpt = tmp_path / "run.npz"
    _, s1 = run(task, strategy, 1, save=ckpt)
    _, _, meta = read_checkpoint(ckpt)
    assert meta["epoch"] == 1 and meta["strategy"] == strategy and meta["ranks"] == 3
    assert len(meta["data_order"]) == len(task[0][0])  # the next epoch's permutation
    if strategy == "dgc":  # every rank's u and v, gathered by rank 0
        assert meta["rank_u"].shape[0] == meta["rank_v"].shape[0] == 3
        assert np.any(meta["rank_v"][0] != meta["rank_v"][1])
    # a different initial model: everything must come from the checkpoint
    resumed, s2 = run(task, strategy, 3, seed_model=5, resume=ckpt, save=ckpt)
    for p, q in zip(params(resumed), params(straight), strict=True):
        np.testing.assert_array_equal(p, q)
    assert s2["test_accuracy"] == s_straight["test_accuracy"]
    assert s2["resumed_from_epoch"] == 1 and s2["epochs_run"] == 2
    assert s2["steps"] == s_straight["steps"] * 2 // 3  # the steps this process ran
    assert read_checkpoint(ckpt)[2]["epoch"] == 3


@pytest.mark.parametrize("strategy", ["sync", "dgc"])
def test_a_failed_thread_stops_the_run_and_resume_loses_nothing(task, strategy, tmp_path):
    straight, s_straight = run(task, strategy, 2)
    ckpt = tmp_path / "run.npz"
    steps_per_epoch = 32  # 1000 samples, batches of 32
    with pytest.raises(DistributedRunFailed) as info:
        run(task, strategy, 2, save=ckpt, faults=Faults(die={2: steps_per_epoch + 5}))
    text = str(info.value)
    assert f"{strategy}: rank 2 of 3 failed (WorkerFailure" in text
    assert "shard is not handed to the others" in text
    assert f"holds epoch 1: resume with --resume {ckpt}" in text
    assert read_checkpoint(ckpt)[2]["epoch"] == 1
    resumed, s2 = run(task, strategy, 2, resume=ckpt)
    for p, q in zip(params(resumed), params(straight), strict=True):
        np.testing.assert_array_equal(p, q)
    assert s2["test_accuracy"] == s_straight["test_accuracy"]


def test_failure_without_a_checkpoint_says_so(task):
    with pytest.raises(DistributedRunFailed, match="no checkpoint was being written"):
        run(task, "sync", 1, faults=Faults(die={0: 3}))


def test_hogwild_resumes(task, tmp_path):
    ckpt = tmp_path / "hw.npz"
    _, s1 = run(task, "hogwild", 1, save=ckpt)
    assert read_checkpoint(ckpt)[2]["epoch"] == 1
    model, s2 = run(task, "hogwild", 2, seed_model=5, resume=ckpt, save=ckpt)
    assert s2["resumed_from_epoch"] == 1 and read_checkpoint(ckpt)[2]["epoch"] == 2
    assert s2["test_accuracy"] > 0.8


def test_async_checkpoints_each_epoch_and_resumes_within_noise(task, tmp_path):
    kw = dict(lr=0.1, timeout=10.0, ack_timeout=2.0)
    _, straight = run(task, "async", 2, **kw)
    ckpt = tmp_path / "ps.npz"
    _, first = run(task, "async", 1, save=ckpt, **kw)
    _, _, meta = read_checkpoint(ckpt)
    assert meta["epoch"] == 1 and meta["shared_ps_version"] == first["version"]
    _, resumed = run(task, "async", 2, seed_model=5, resume=ckpt, save=ckpt, **kw)
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["version"] == straight["version"]  # one epoch of updates on top
    assert abs(resumed["test_accuracy"] - straight["test_accuracy"]) < 0.05


def test_resume_refuses_a_checkpoint_from_another_run(task, tmp_path):
    ckpt = tmp_path / "run.npz"
    run(task, "sync", 1, save=ckpt)
    with pytest.raises(CheckpointError, match="ranks"):
        run(task, "sync", 2, resume=ckpt, workers=2)
    with pytest.raises(CheckpointError, match="strategy"):
        run(task, "dgc", 2, resume=ckpt)
    with pytest.raises(CheckpointError, match="does not exist"):
        run(task, "sync", 2, resume=tmp_path / "missing.npz")
