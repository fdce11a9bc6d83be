"""`minigrad train` mistakes end in ONE line on stderr and exit 2, never a traceback.

Each line reads `minigrad train: <what is wrong>; <what to do>`. The checks run before any
data loads or training starts, so these tests are quick; `--debug` (or MINIGRAD_DEBUG=1)
brings the traceback back.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigrad.data.mnist as mnist
from minigrad import cli


def fails(capsys, *argv, code=2):
    """Run the CLI; check the exit status and the one-line message; return that line."""
    assert cli.main(list(argv)) == code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "no message on stderr"
    last = lines[-1]
    assert last.startswith("minigrad train: "), last
    assert "; " in last, f"says what is wrong but not what to do: {last}"
    assert "epoch   1/" not in captured.out + err, "training started before the check"
    return last


@pytest.fixture(scope="module")
def iris_checkpoint(tmp_path_factory):
    """An Adam iris checkpoint after 2 epochs."""
    path = tmp_path_factory.mktemp("ck") / "iris.npz"
    assert cli.main(["train", "iris", "--epochs", "2", "--save", str(path), "--json"]) == 0
    return path


# ---- --resume of something that is not a usable checkpoint ---------------------------------
def test_resume_missing_checkpoint(capsys, tmp_path):
    line = fails(capsys, "train", "iris", "--resume", str(tmp_path / "nope.npz"))
    assert "nope.npz does not exist" in line and "--save" in line


def test_resume_empty_checkpoint(capsys, tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert "is empty" in fails(capsys, "train", "iris", "--resume", str(empty))


def test_resume_garbage_file(capsys, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"certainly not a checkpoint\n" * 10)
    line = fails(capsys, "train", "iris", "--resume", str(garbage))
    assert "not a minigrad checkpoint" in line and "allow_pickle" not in line


def test_resume_truncated_checkpoint(capsys, tmp_path, iris_checkpoint):
    cut = tmp_path / "cut.npz"
    data = iris_checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in fails(capsys, "train", "iris", "--resume", str(cut))


def test_resume_checkpoint_with_bad_crc(capsys, tmp_path, iris_checkpoint):
    data = bytearray(iris_checkpoint.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    bad = tmp_path / "crc.npz"
    bad.write_bytes(bytes(data))
    assert "corrupt or truncated" in fails(capsys, "train", "iris", "--resume", str(bad))


def test_resume_a_checkpoint_of_another_task(capsys, iris_checkpoint):
    # refused from the checkpoint's meta, before MNIST is even loaded
    line = fails(capsys, "train", "mnist", "--resume", str(iris_checkpoint))
    assert "--task iris" in line and "--task mnist" in line


def test_resume_with_another_optimizer(capsys, iris_checkpoint):
    line = fails(capsys, "train", "iris", "--optimizer", "sgd", "--resume",
                 str(iris_checkpoint))
    assert "--optimizer adam" in line and "--optimizer sgd" in line


def test_resume_with_another_val_split(capsys, iris_checkpoint):
    line = fails(capsys, "train", "iris", "--val-split", "0.2", "--resume",
                 str(iris_checkpoint))
    assert "--val_split" in line or "--val-split" in line


# ---- bad values -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--seed", "-1"], "--seed must be zero or a positive integer"),
    (["--limit", "0"], "--limit must be a positive number"),
    (["--limit", "-5"], "--limit must be a positive number"),
    (["--eval-limit", "0"], "--eval-limit must be a positive number"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--workers", "-1"], "--workers must be zero or more"),
    (["--val-split", "1.5"], "--val-split is the fraction"),
    (["--optimizer", "sgd", "--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--conv", "im2col"], "--conv does not apply to iris"),
    (["--model", "cnn"], "--model cnn is not a iris model"),
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd"),
    (["--dgc-sparsity", "0.5"], "--dgc-sparsity configures distributed training"),
    (["--server-momentum", "0.5"], "--server-momentum configures distributed training"),
    (["--log-interval", "5"], "add --log FILE.jsonl"),
    (["--strategy", "sync", "--lr-schedule", "cosine"], "--lr-schedule is not supported"),
])
def test_bad_values_are_refused_in_one_line(capsys, argv, words):
    assert words in fails(capsys, "train", "iris", "--epochs", "1", *argv)


def test_mnist_limit_is_checked_before_loading_anything(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGRAD_DATA", str(tmp_path / "no-mnist-here"))
    assert "--limit must be a positive" in fails(capsys, "train", "mnist", "--limit", "0")
    assert "--limit must be a positive" in fails(capsys, "train", "mnist", "--limit", "-5")


@pytest.mark.parametrize("argv, words", [
    (["mnist", "--conv", "bogus"], "argument --conv: invalid choice: 'bogus'"),
    (["iris", "--lr-schedule", "linear"], "argument --lr-schedule: invalid choice"),
    (["iris", "--device", "tpu"], "argument --device: invalid choice"),
    (["iris", "--lr", "fast"], "argument --lr: invalid float value"),
])
def test_parse_errors_are_one_line_too(capsys, argv, words):
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and err[0].startswith("minigrad train: ")


def test_unwritable_save_path_is_refused_before_training(capsys, tmp_path):
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    line = fails(capsys, "train", "iris", "--save", str(a_file / "ck.npz"))
    assert "cannot save a checkpoint" in line and "writable directory" in line
    assert "is a directory" in fails(capsys, "train", "iris", "--save", str(tmp_path))


# ---- MNIST files -----------------------------------------------------------------------------
@pytest.fixture
def published_mnist():
    """The directory of the published files (the tests' MINIGRAD_DATA)."""
    root = Path(os.environ.get("MINIGRAD_DATA", "/nonexistent"))
    if not all((root / name).is_file() for name in mnist.FILES):
        pytest.skip(f"MNIST files not found in {root}")
    return root


@pytest.fixture
def offline_mnist(monkeypatch, tmp_path):
    """MINIGRAD_DATA points to an empty directory, and every mirror is unreachable."""
    root = tmp_path / "mnist"
    root.mkdir()
    monkeypatch.setenv("MINIGRAD_DATA", str(root))
    monkeypatch.setattr(mnist, "MIRRORS", ((tmp_path / "no-mirror").as_uri() + "/",))
    return root


def test_missing_mnist_says_missing_where_and_what_to_do(capsys, offline_mnist):
    line = fails(capsys, "train", "mnist", "--limit", "64", "--epochs", "1")
    assert "missing" in line and "corrupt" not in line
    assert str(offline_mnist) in line and mnist.TRAIN_IMAGES in line
    assert "MINIGRAD_DATA" in line


@pytest.mark.mnist
def test_corrupt_mnist_says_corrupt_not_missing(capsys, published_mnist, offline_mnist):
    for name in mnist.FILES:
        shutil.copyfile(published_mnist / name, offline_mnist / name)
    raw = bytearray((offline_mnist / mnist.TEST_LABELS).read_bytes())
    raw[-100] ^= 1  # one flipped bit in the compressed stream
    (offline_mnist / mnist.TEST_LABELS).write_bytes(bytes(raw))
    line = fails(capsys, "train", "mnist", "--limit", "64", "--epochs", "1")
    assert f"{mnist.TEST_LABELS} corrupt" in line and "missing" not in line
    assert str(offline_mnist) in line


# ---- the traceback stays available ----------------------------------------------------------
def test_debug_flag_and_environment_show_the_traceback(capsys, tmp_path):
    missing = str(tmp_path / "nope.npz")
    assert cli.main(["train", "iris", "--resume", missing, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("minigrad train: ")
    env = dict(os.environ, MINIGRAD_DEBUG="1")
    r = subprocess.run([sys.executable, "-m", "minigrad.cli", "train", "iris", "--resume",
                        missing], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "Traceback" in r.stderr
    env["MINIGRAD_DEBUG"] = "0"
    r = subprocess.run([sys.executable, "-m", "minigrad.cli", "train", "iris", "--resume",
                        missing], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr


# ---- resume: the command line's hyper-parameters win; --epochs is the total -----------------
def test_resume_uses_the_command_lines_lr_and_says_so(capsys, tmp_path, iris_checkpoint):
    log = tmp_path / "run.jsonl"
    code = cli.main(["train", "iris", "--epochs", "3", "--resume", str(iris_checkpoint),
                     "--lr", "0.5", "--json", "--log", str(log)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["lr"] == 0.5 and summary["final_lr"] == 0.5
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["lr"] for e in lines if e["event"] == "epoch"] == [0.5]


def test_resume_past_the_target_reports_the_real_epoch_count(capsys, iris_checkpoint):
    assert cli.main(["train", "iris", "--epochs", "1", "--resume", str(iris_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out
    assert "after 2 epochs, 0 in this run" in out.strip().splitlines()[-1]


def test_resumed_sgd_run_equals_uninterrupted_and_momentum_is_the_command_lines(
        capsys, tmp_path):
    full, part = tmp_path / "full.npz", tmp_path / "part.npz"
    base = ["train", "iris", "--optimizer", "sgd", "--lr", "0.05", "--json"]
    assert cli.main(base + ["--epochs", "3", "--save", str(full)]) == 0
    assert cli.main(base + ["--epochs", "1", "--save", str(part)]) == 0
    assert any(k.endswith("momentum_buffer") for k in np.load(part).files)
    assert cli.main(base + ["--epochs", "3", "--resume", str(part), "--save", str(part)]) == 0
    a, b = np.load(full), np.load(part)
    for k in a.files:
        if k.startswith(("model/", "optim/")):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    capsys.readouterr()
    assert cli.main(base + ["--epochs", "4", "--momentum", "0.5", "--resume", str(part)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["momentum"] == 0.5 and summary["epochs"] == 4
