"""`minigrad train <task> --strategy X`: the CLI entry point, end to end on MNIST."""
import json

import pytest

from minigrad import cli


def dmain(argv):
    """`minigrad train ARGV...` through the one CLI entry point."""
    return cli.main(["train", *argv])


def parse(argv):
    return cli.build_parser().parse_args(["train", *argv])

SUMMARY_KEYS = ("task", "epochs", "test_accuracy", "train_seconds", "seconds_per_epoch",
                "strategy", "workers", "bytes_sent", "dense_bytes", "bytes_moved",
                "dense_moved", "compression_ratio", "compression_ratio_overall",
                "traffic_ratio", "traffic_ratio_overall", "staleness_mean", "staleness_max",
                "images_per_second", "threads")

COMMON = ["mnist", "--limit", "2000", "--epochs", "1", "--eval-limit", "500", "--workers",
          "3", "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "32", "--json"]


@pytest.mark.mnist
@pytest.mark.parametrize("strategy,extra", [
    ("sync", []),
    ("hogwild", []),
    ("async", ["--lr", "0.1"]),
    ("dgc", []),  # the default warm-up (a quarter epoch), then 99.9% sparsity
])
def test_each_strategy_learns_mnist_subset(strategy, extra, capsys):
    code = dmain([*COMMON, "--strategy", strategy, *extra])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["strategy"] == strategy and summary["task"] == "mnist"
    assert summary["workers"] == 3 and summary["threads"]["workers"] == 3
    assert summary["images_per_second"] > 0
    # 63 global batches of 32 images; chance is 0.1. Over so few steps, hogwild and async
    # (plain SGD on ~11-image slices; their thread interleaving, hence their result, varies
    # run to run) and DGC (warm-up, clipped local gradients) learn slower than sync.
    bar = 0.6 if strategy == "sync" else 0.3
    assert summary["test_accuracy"] > bar, summary
    if strategy == "dgc":  # MnistCNN at 99.9%: the paper's 270-600x, and what it saves
        assert summary["compression_ratio"] > 270  # at N = 3 on a ring: ~2/3 of it
        assert 100 < summary["traffic_ratio"] < summary["compression_ratio"]
        assert summary["threshold_fallback_rate"] < 0.01
    if strategy == "sync":
        assert summary["compression_ratio"] == 1.0
        assert summary["traffic_ratio"] == pytest.approx(1.0)
    if strategy == "async":
        assert summary["staleness_mean"] is not None


@pytest.mark.mnist
def test_human_readable_line(capsys):
    argv = [a for a in COMMON if a != "--json"]
    assert dmain([*argv, "--strategy", "sync", "--limit", "300"]) == 0
    assert "sync x3 (threads): test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--strategy", "dgc", "--optimizer", "adam"], "--optimizer sgd"),
    (["--strategy", "hogwild", "--comm", "mpi"], "--comm threads"),
    (["--strategy", "sync", "--workers", "0"], "--workers"),
])
def test_bad_combinations_exit_2(argv, message, capsys):
    assert dmain(["iris", "--epochs", "1", "--optimizer", "sgd", *argv]) == 2
    assert message in capsys.readouterr().err


def test_add_arguments_defaults():
    args = parse(["iris", "--strategy", "async"])
    assert args.comm == "threads" and args.staleness_aware is True
    assert args.staleness_bound is None and args.dgc_warmup_epochs == 0.25
    assert args.dgc_wire == "fp16" and args.dgc_clip_norm == 5.0 and args.save is None
    assert parse(["iris", "--no-staleness-aware"]).staleness_aware is False
    assert parse(["iris"]).strategy is None


def test_injected_faults_from_the_command_line(capsys):
    # Compile the kernels first: a first gradient that JIT-compiles for seconds would make
    # every worker "stalled" at this test's 0.3 s timeout.
    from minigrad.distributed.common import compute_gradients
    from minigrad.tasks import build_task

    iris = build_task("iris")
    compute_gradients(iris.model, iris.train[0][:8], iris.train[1][:8])
    code = dmain(["iris", "--epochs", "3", "--optimizer", "sgd", "--lr", "0.1",
                      "--strategy", "async", "--workers", "3", "--json",
                      "--inject-failure", "1:2", "--inject-stall", "2:1:1.0",
                      "--ps-timeout", "0.3", "--ack-timeout", "0.5",
                      "--ps-drain-timeout", "10"])
    assert code == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["dead_workers"] == [1] and s["stalled_workers"] == [2]
    assert s["worker_status"]["3"] == "done"


def test_save_and_resume_from_the_command_line(tmp_path, capsys):
    ckpt = str(tmp_path / "run.npz")
    argv = ["iris", "--optimizer", "sgd", "--lr", "0.1", "--batch-size", "16", "--workers",
            "2", "--strategy", "dgc", "--json"]
    assert dmain([*argv, "--epochs", "6"]) == 0
    straight = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dmain([*argv, "--epochs", "3", "--save", ckpt]) == 0
    capsys.readouterr()
    assert dmain([*argv, "--epochs", "6", "--resume", ckpt, "--save", ckpt]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["resumed_from_epoch"] == 3 and resumed["checkpoint"] == ckpt
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["train_loss"] is not None


def test_a_failed_rank_exits_3_naming_the_rank(tmp_path, capsys):
    ckpt = str(tmp_path / "run.npz")
    code = dmain(["iris", "--epochs", "3", "--optimizer", "sgd", "--lr", "0.1",
                  "--batch-size", "16", "--strategy", "sync", "--workers", "2",
                  "--save", ckpt, "--inject-failure", "1:10"])
    assert code == 3
    err = capsys.readouterr().err
    assert "sync: rank 1 of 2 failed" in err and f"--resume {ckpt}" in err


def test_resume_with_another_strategy_exits_2(tmp_path, capsys):
    ckpt = str(tmp_path / "run.npz")
    argv = ["iris", "--optimizer", "sgd", "--batch-size", "16", "--workers", "2"]
    assert dmain([*argv, "--epochs", "1", "--strategy", "sync", "--save", ckpt]) == 0
    capsys.readouterr()
    assert dmain([*argv, "--epochs", "2", "--strategy", "dgc", "--resume", ckpt]) == 2
    assert "strategy" in capsys.readouterr().err


@pytest.mark.mpi
def test_mpi_ranks_share_the_host_cores(capsys, monkeypatch):
    """Under `mpiexec -n N` every rank plans with the ranks on its host: each gets
    host_cores // N cores, and its one training thread that many Numba threads."""
    import numba
    from mpi4py import MPI

    from minigrad import threads
    from minigrad.distributed.sync import SyncSGD

    train, seen = SyncSGD.train, []

    def spy(self, *args, **kwargs):
        seen.append(numba.get_num_threads())
        return train(self, *args, **kwargs)

    monkeypatch.setattr(SyncSGD, "train", spy)
    world = MPI.COMM_WORLD
    code = dmain(["iris", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.1",
                  "--strategy", "sync", "--comm", "mpi", "--threads", "4", "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert seen == [min(max(1, 4 // world.size), numba.config.NUMBA_NUM_THREADS)]
    if world.rank != 0:
        return
    s = json.loads(out[-1])
    plan = s["threads"]
    assert plan["ranks_on_host"] == world.size == s["ranks"]  # one host in the tests
    assert plan["host_cores"] == 4 and plan["cores"] == max(1, 4 // world.size)
    assert plan["workers"] == 1
    assert plan["numba_threads_per_worker"] == min(plan["cores"],
                                                   numba.config.NUMBA_NUM_THREADS)
    assert s["images_per_second"] > 0
    assert threads.local_ranks() == world.size


@pytest.mark.mnist
@pytest.mark.parametrize("strategy", ["model-parallel", "tensor-slicing"])
def test_split_strategies_from_the_command_line(strategy, capsys):
    argv = ["mnist", "--limit", "640", "--epochs", "1", "--eval-limit", "300", "--workers",
            "2", "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "32", "--json"]
    assert dmain([*argv, "--strategy", strategy]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["strategy"] == strategy and s["workers"] == 2
    assert s["test_accuracy"] > 0.2                       # 20 steps of 32; chance is 0.1
    assert s["param_bytes_per_worker"] > 0 and s["bytes_per_step"] > 0
    assert s["threads"]["workers"] == 2 and s["images_per_second"] > 0
    if strategy == "model-parallel":                      # each holds about half the filters
        assert s["param_bytes_per_worker"] < 0.6 * s["param_bytes_total"]
