"""The thread budget (minigrad.threads) in effect: the CLI and every distributed strategy ask
it, every worker thread runs its kernels on its share, and the --json summaries record it.

Numba keeps its thread count per calling thread, so the checks that matter look from inside
a worker: each strategy's training method is wrapped to note numba.get_num_threads() in the
thread that runs it. A fresh thread starts with Numba's whole pool (NUMBA_NUM_THREADS), so
a worker that skipped `threads.apply_in_worker` would show the pool size, not its share.
"""
import json
import threading

import numba
import numpy as np
import pytest

from minigrad import cli, threads
from minigrad.data.transforms import batch_rng
from minigrad.distributed import train_distributed
from minigrad.distributed.common import ShardedBatches

POOL = numba.config.NUMBA_NUM_THREADS
SGD = ["--optimizer", "sgd", "--lr", "0.1"]


@pytest.fixture(autouse=True)
def no_thread_env(monkeypatch):
    """The budget from the machine alone: no MINIGRAD_* overrides from the caller's shell."""
    for var in (threads.ENV_THREADS, threads.ENV_NUMBA, threads.ENV_BLAS, threads.ENV_LOADER):
        monkeypatch.delenv(var, raising=False)


def train_json(capsys, *argv):
    """`minigrad train ARGV... --json` in this process: (exit code, the summary)."""
    code = cli.main(["train", *argv, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, (json.loads(out[-1]) if code == 0 else None)


def expected_numba(cores, workers):
    return min(max(1, cores // workers), POOL)


# Each strategy's per-worker training method (the code a worker thread runs).
TRAIN_METHODS = {"hogwild": ("minigrad.distributed.hogwild", "Hogwild"),
                 "sync": ("minigrad.distributed.sync", "SyncSGD"),
                 "dgc": ("minigrad.distributed.dgc", "DGC"),
                 "async": ("minigrad.distributed.async_ps", "AsyncWorker")}


@pytest.fixture
def seen_in_workers(monkeypatch):
    """Patch one strategy's train() to record (thread name, Numba threads) where it runs."""
    import importlib

    seen = []

    def patch(strategy):
        module, name = TRAIN_METHODS[strategy]
        cls = getattr(importlib.import_module(module), name)
        original = cls.train

        def train(self, *args, **kwargs):
            seen.append((threading.current_thread().name, numba.get_num_threads()))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "train", train)
        return seen
    return patch


def test_hogwild_reports_its_plan_and_throughput(capsys):
    code, s = train_json(capsys, "iris", "--strategy", "hogwild", "--workers", "2", *SGD,
                         "--epochs", "2")
    assert code == 0
    plan = s["threads"]
    assert plan["workers"] == 2 and plan["ranks_on_host"] == 1
    assert plan["cores"] == threads.host_cores()
    assert plan["numba_threads_per_worker"] == expected_numba(plan["cores"], 2)
    assert plan["blas_threads_per_worker"] == 1  # several workers share BLAS's one pool
    assert s["images_per_second"] > 0
    # 2 epochs of iris's 120 training images, all threads together
    assert s["images_per_second"] == pytest.approx(240 / s["train_seconds"])


@pytest.mark.parametrize("strategy", list(TRAIN_METHODS))
def test_every_worker_thread_runs_on_its_share(strategy, seen_in_workers, capsys):
    seen = seen_in_workers(strategy)
    # 2 workers on 2 cores: 1 Numba thread each (a fresh thread would have the whole pool)
    code, s = train_json(capsys, "iris", "--strategy", strategy, "--workers", "2",
                         "--threads", "2", *SGD, "--epochs", "1")
    assert code == 0
    assert s["threads"]["host_cores"] == 2 and s["threads"]["sources"]["host_cores"] == \
        "argument"
    assert len(seen) == 2, seen  # async: the two workers (the server runs no train())
    assert all(name != "MainThread" for name, _ in seen)
    assert {n for _, n in seen} == {1}
    assert s["images_per_second"] > 0


@pytest.mark.skipif(POOL < 2, reason="Numba's pool has one thread: every share is 1")
def test_more_cores_give_each_worker_more_numba_threads(seen_in_workers, capsys):
    seen = seen_in_workers("sync")
    code, s = train_json(capsys, "iris", "--strategy", "sync", "--workers", "2",
                         "--threads", str(4 * POOL), *SGD, "--epochs", "1")
    assert code == 0
    assert {n for _, n in seen} == {POOL}  # 2 * POOL each, capped by the pool
    assert any("NUMBA_NUM_THREADS" in note for note in s["threads"]["notes"])


def test_single_process_training_runs_inside_the_budget(monkeypatch, capsys):
    import minigrad.train

    fit, seen = minigrad.train.fit, []

    def spy(*args, **kwargs):
        seen.append(numba.get_num_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(minigrad.train, "fit", spy)
    before = numba.get_num_threads()
    code, s = train_json(capsys, "iris", "--epochs", "2", "--threads", "1")
    assert code == 0 and seen == [1]
    assert numba.get_num_threads() == before  # restored after the run
    plan = s["threads"]
    assert plan["host_cores"] == 1 and plan["numba_threads_per_worker"] == 1
    assert plan["workers"] == 1 and plan["blas_threads_per_worker"] == 1
    # no --workers: the budget's choice, no loader thread for a deterministic transform
    assert s["workers"] == plan["loader_workers"] == 0
    assert s["augment"] is False


def test_explicit_loader_workers_and_the_environment(monkeypatch, capsys):
    code, s = train_json(capsys, "iris", "--epochs", "1", "--workers", "3")
    assert code == 0
    assert s["workers"] == 3 and s["threads"]["sources"]["loader_workers"] == "argument"
    monkeypatch.setenv(threads.ENV_THREADS, "1")
    code, s = train_json(capsys, "iris", "--epochs", "1")
    assert code == 0
    assert s["threads"]["host_cores"] == 1
    assert s["threads"]["sources"]["host_cores"] == f"env {threads.ENV_THREADS}"


def test_a_strategy_without_workers_gets_the_documented_default(capsys):
    from minigrad.distributed.cli import DEFAULT_WORKERS

    code, s = train_json(capsys, "iris", "--strategy", "sync", *SGD, "--epochs", "1")
    assert code == 0
    assert s["workers"] == DEFAULT_WORKERS == s["threads"]["workers"]


def test_help_says_what_workers_and_threads_default_to(capsys):
    from minigrad.distributed.cli import DEFAULT_WORKERS

    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "thread budget's choice" in text
    assert f"training workers (default: {DEFAULT_WORKERS})" in text
    assert "--threads N" in text and "$MINIGRAD_THREADS" in text
    assert "--augment" in text


def test_info_prints_the_thread_plan(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"threads: {threads.plan().describe()}" in out.splitlines()


@pytest.mark.parametrize("argv,message", [
    (["iris", "--augment"], "--augment applies to mnist"),
    (["iris", "--threads", "0"], "--threads must be positive"),
])
def test_bad_thread_options_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(["train", *argv, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_thread_environment_variable_exits_2(monkeypatch, capsys):
    monkeypatch.setenv(threads.ENV_THREADS, "many")
    assert cli.main(["train", "iris", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert threads.ENV_THREADS in err and err.count("\n") == 1


# ---- random transforms in the distributed data path -----------------------------------------
class AddNoise:
    """A random transform: x + noise drawn from the batch's generator."""
    random = True

    def __call__(self, batch, rng):
        x, y = batch
        return x + rng.standard_normal(x.shape).astype(x.dtype), y


def test_sharded_batches_give_each_slice_its_own_generator():
    X = np.zeros((10, 3), dtype=np.float32)
    y = np.arange(10)
    shards = [ShardedBatches((X, y), 4, 7, w, 2, AddNoise()) for w in range(2)]
    for epoch in (0, 1):
        got = [list(b.epoch(epoch)) for b in shards]
        for w, slices in enumerate(got):
            for step, xb, _, _ in slices:
                want = batch_rng(7, epoch, step, w).standard_normal(xb.shape)
                np.testing.assert_allclose(xb, want.astype(np.float32))
        # the two shards of a step draw different numbers; a repeat draws the same
        assert not np.allclose(got[0][0][1][:1], got[1][0][1][:1])
        again = list(shards[0].epoch(epoch))
        np.testing.assert_array_equal(again[0][1], got[0][0][1])


def test_a_random_transform_needs_an_evaluation_transform():
    from minigrad.tasks import build_task

    iris = build_task("iris")
    with pytest.raises(ValueError, match="eval_transform"):
        train_distributed("sync", iris.model, iris.train, iris.test, transform=AddNoise(),
                          workers=2, epochs=1)


def test_augmented_sync_run_evaluates_on_clean_data():
    from minigrad.tasks import build_task

    iris = build_task("iris")
    s = train_distributed("sync", iris.model, iris.train, iris.test, transform=AddNoise(),
                          eval_transform=lambda batch: batch, workers=2, epochs=2,
                          batch_size=16, lr=0.05)
    assert s["images_per_second"] > 0 and 0.0 <= s["test_accuracy"] <= 1.0


@pytest.mark.mnist
def test_augment_on_mnist_uses_a_loader_thread(capsys):
    code, s = train_json(capsys, "mnist", "--augment", "--limit", "128", "--epochs", "1",
                         "--eval-limit", "64", "--batch-size", "64")
    assert code == 0
    assert s["augment"] is True
    plan = s["threads"]
    assert s["workers"] == plan["loader_workers"] == max(1, plan["cores"] // 8)
    assert 0.0 <= s["test_accuracy"] <= 1.0
