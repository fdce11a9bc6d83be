"""`minigrad train` flags that shape the run and what it reports: --log (the JSON-lines
history), --lr-schedule, --val-split, --momentum, --eval-limit, --limit, --model,
--progress, and the first-run compilation notice."""
import json
import math

import numpy as np
import pytest

from minigrad import cli
from minigrad.data.loader import DataLoader
from minigrad.tasks import available_models, build_task, split_validation
from minigrad.train import (
    TrainingDiverged,
    TrainingLog,
    announce_compilation,
    fit,
    learning_rate,
    make_optimizer,
    read_log,
)

EPOCH_KEYS = {"event", "epoch", "step", "loss", "train_accuracy", "test_accuracy",
              "val_accuracy", "lr", "seconds", "epoch_seconds", "images_per_second",
              "loader_stall"}
STEP_KEYS = {"event", "epoch", "step", "loss", "lr", "seconds", "images_per_second"}


def summary_of(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_log_file_has_the_documented_events(tmp_path, capsys):
    log = tmp_path / "iris-run.jsonl"
    # iris: 120 training samples, batch 64 -> 2 steps per epoch, 6 in 3 epochs
    assert cli.main(["train", "iris", "--epochs", "3", "--log", str(log), "--log-interval",
                     "2", "--json", "--val-split", "0.25"]) == 0
    summary = summary_of(capsys)
    events = list(read_log(log))
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "step", "epoch", "step", "epoch", "step", "epoch", "end"]
    start = events[0]
    assert start["run"] == "iris-run" and start["time"] > 1.6e9
    for key in ("task", "model", "conv", "optimizer", "lr", "lr_schedule", "momentum",
                "batch_size", "epochs", "seed", "strategy", "workers"):
        assert key in start["config"], key
    assert start["config"]["epochs"] == 3 and start["config"]["conv"] is None
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [2, 4, 6]
    assert all(set(e) == STEP_KEYS for e in steps)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert all(set(e) == EPOCH_KEYS for e in epochs)
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and [e["step"] for e in epochs] == [2, 4, 6]
    assert all(0.0 <= e["loader_stall"] <= 1.0 and e["images_per_second"] > 0 for e in epochs)
    assert all(e["val_accuracy"] is not None for e in epochs)
    assert epochs[-1]["seconds"] >= epochs[-1]["epoch_seconds"]
    assert events[-1]["summary"] == summary  # the same object --json prints
    assert summary["images_per_second"] > 0 and summary["val_accuracy"] is not None


def test_log_label_and_resume_appends(tmp_path, capsys):
    log, ck = tmp_path / "a.jsonl", tmp_path / "ck.npz"
    cli.main(["train", "iris", "--epochs", "1", "--log", str(log), "--run", "first",
              "--save", str(ck)])
    cli.main(["train", "iris", "--epochs", "2", "--log", str(log), "--resume", str(ck)])
    capsys.readouterr()
    events = list(read_log(log))
    assert [e["event"] for e in events] == ["start", "epoch", "end", "start", "epoch", "end"]
    assert events[0]["run"] == "first" and events[3]["run"] == "a"
    assert events[4]["epoch"] == 2 and events[4]["step"] == 4


def test_read_log_tolerates_a_truncated_last_line_only(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"event": "start"}\n{"event": "epoch", "epoch": 1}\n{"event": "ep')
    assert [e["event"] for e in read_log(path)] == ["start", "epoch"]
    path.write_text('{"event": "start"}\n{"event": "ep\n{"event": "epoch", "epoch": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_log(path))


def test_the_log_is_written_as_training_goes_and_records_divergence(tmp_path):
    task = build_task("iris")
    model = task.model
    path = tmp_path / "log.jsonl"
    seen_on_disk = []

    def poison(epoch, step, loss):
        seen_on_disk.append(sum(1 for e in read_log(path) if e["event"] == "epoch"))
        if epoch == 2 and step == 0:
            model[0].weight.data[0, 0] = np.nan  # the next step's loss is NaN

    with TrainingLog(path) as log, DataLoader(task.train, batch_size=64, seed=0) as loader:
        with pytest.raises(TrainingDiverged) as info:
            fit(model, make_optimizer("adam", model.parameters(), 1e-3), loader, task.test,
                10, log=lambda s: None, on_step=poison, train_log=log, log_interval=1)
    assert seen_on_disk == [0, 0, 1, 1, 2]  # each epoch event is on disk at once
    last = list(read_log(path))[-1]
    assert last["event"] == "diverged" and last["loss"] == "nan"
    assert last["epoch"] == 3 and last["step"] == 6 and "loss became nan" in last["message"]
    assert info.value.summary["epochs_run"] == 2


def test_a_non_finite_weight_at_the_end_of_an_epoch_stops_training():
    task = build_task("iris")
    model = task.model

    def poison(epoch, step, loss):
        if epoch == 1 and step == 1:  # after the last step of epoch 2
            model[0].weight.data[0, 0] = np.inf

    with DataLoader(task.train, batch_size=64, seed=0) as loader:
        with pytest.raises(TrainingDiverged, match="a weight became non-finite at epoch 2"):
            fit(model, make_optimizer("adam", model.parameters(), 1e-3), loader, task.test,
                10, log=lambda s: None, on_step=poison)


def test_diverged_run_prints_its_json_summary_and_logs_the_end(tmp_path, capsys):
    log = tmp_path / "div.jsonl"
    code = cli.main(["train", "iris", "--optimizer", "sgd", "--lr", "1e6", "--epochs", "20",
                     "--json", "--log", str(log)])
    assert code == 3
    summary = summary_of(capsys)
    assert summary["status"] == "diverged" and summary["epochs_run"] == 2
    kinds = [e["event"] for e in read_log(log)]
    assert kinds[-2:] == ["diverged", "end"]


# ---- the learning-rate schedule ---------------------------------------------------------------
def test_learning_rate_schedules():
    assert [learning_rate("constant", 0.1, e, 4) for e in range(4)] == [0.1] * 4
    step = [learning_rate("step", 1.0, e, 8) for e in range(8)]
    np.testing.assert_allclose(step, [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert learning_rate("step", 1.0, 0, 1) == 1.0  # a 1-epoch run is never cut
    cosine = [learning_rate("cosine", 1.0, e, 4) for e in range(4)]
    np.testing.assert_allclose(cosine, [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    with pytest.raises(ValueError, match="unknown lr schedule"):
        learning_rate("linear", 1.0, 0, 4)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_schedule_reaches_the_optimizer(tmp_path, capsys, schedule):
    log = tmp_path / "s.jsonl"
    assert cli.main(["train", "iris", "--epochs", "4", "--lr", "0.01", "--lr-schedule",
                     schedule, "--log", str(log)]) == 0
    capsys.readouterr()
    lrs = [e["lr"] for e in read_log(log) if e["event"] == "epoch"]
    np.testing.assert_allclose(lrs, [learning_rate(schedule, 0.01, e, 4) for e in range(4)])


# ---- flags that used to be ignored ------------------------------------------------------------
def test_val_split_is_reproducible_disjoint_and_independent_of_the_seed():
    X = np.arange(100).reshape(100, 1)
    y = np.arange(100)
    (Xt, yt), (Xv, yv) = split_validation((X, y), 0.2)
    assert len(yv) == 20 and len(yt) == 80 and not set(yt) & set(yv)
    assert np.all(np.diff(yt) > 0)  # the training samples keep their order
    (_, yt2), (_, yv2) = split_validation((X, y), 0.2)
    np.testing.assert_array_equal(yv, yv2)
    with pytest.raises(ValueError):
        split_validation((X[:1], y[:1]), 0.5)


def test_momentum_takes_effect_without_strategy(capsys):
    losses = []
    for momentum in ("0", "0.9"):
        assert cli.main(["train", "iris", "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05",
                         "--momentum", momentum, "--json"]) == 0
        s = summary_of(capsys)
        assert s["momentum"] == float(momentum)
        losses.append(s["final_loss"])
    assert losses[0] != losses[1]


def test_eval_limit_and_limit_take_effect_on_iris(capsys):
    assert cli.main(["train", "iris", "--epochs", "1", "--json"]) == 0
    full = summary_of(capsys)
    assert full["test_accuracy"] not in (0.0, 1.0) and full["steps"] == 2
    assert cli.main(["train", "iris", "--epochs", "1", "--json", "--eval-limit", "1",
                     "--limit", "5"]) == 0
    limited = summary_of(capsys)
    assert limited["test_accuracy"] in (0.0, 1.0)  # one test sample
    assert limited["steps"] == 1  # 5 training samples: one batch per epoch


def test_progress_bar_and_epoch_lines_do_not_share_a_line(capsys, monkeypatch):
    tqdm = pytest.importorskip("tqdm")

    class EveryStep(tqdm.tqdm):  # draw every step, however fast
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", EveryStep)
    assert cli.main(["train", "iris", "--epochs", "2", "--progress"]) == 0
    captured = capsys.readouterr()
    epoch_lines = [line for line in captured.out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2 and all("\r" not in line for line in epoch_lines)
    assert "epoch 1/2" in captured.err and "img/s" in captured.err  # the per-epoch bar


def test_compilation_notice_only_when_numba_compiles():
    numba = pytest.importorskip("numba")

    @numba.njit(cache=False)
    def twice(x):
        return 2 * x

    said = []
    with announce_compilation(said.append):
        twice(1.0)  # compiles: not in any cache
        twice(2.0)  # the same signature: no compilation
        twice(3)    # a new signature compiles again, but the notice is said once
    assert said == ["compiling kernels (first run only)"]
    with announce_compilation(said.append):
        twice(4.0)  # already compiled in this process
    assert len(said) == 1


@pytest.mark.mnist
@pytest.mark.parametrize("model", available_models("mnist"))
def test_mnist_model_flag(capsys, model):
    assert cli.main(["train", "mnist", "--model", model, "--limit", "128", "--epochs", "1",
                     "--eval-limit", "200", "--json"]) == 0
    s = summary_of(capsys)
    assert s["model"] == model and s["conv"] and s["images_per_second"] > 0
