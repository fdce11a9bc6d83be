"""The training loop, checkpoints and the `minigrad` command, end to end on iris."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minigrad as mg
from minigrad import cli
from minigrad.checkpoint import load_checkpoint, save_checkpoint
from minigrad.data.iris import load_iris
from minigrad.data.loader import DataLoader
from minigrad.models import IrisMLP
from minigrad.optim import Adam
from minigrad.train import TrainingDiverged, fit


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, out


def test_train_iris_json_reaches_seed_accuracy_reproducibly(capsys):
    code, out = run_cli(capsys, "train", "iris", "--json", "--seed", "0")
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    for key in ("task", "epochs", "test_accuracy", "train_seconds", "seconds_per_epoch"):
        assert key in summary
    assert summary["task"] == "iris" and summary["epochs"] == 100
    assert summary["test_accuracy"] >= 0.966
    code, out2 = run_cli(capsys, "train", "iris", "--json", "--seed", "0")
    again = json.loads(out2.strip().splitlines()[-1])
    assert again["final_loss"] == summary["final_loss"]
    assert again["test_accuracy"] == summary["test_accuracy"]


def test_workers_do_not_change_the_result(capsys):
    results = []
    for workers in ("0", "3"):
        _, out = run_cli(capsys, "train", "iris", "--json", "--epochs", "5", "--workers",
                         workers)
        results.append(json.loads(out.strip().splitlines()[-1])["final_loss"])
    assert results[0] == results[1]


def test_save_then_resume_equals_uninterrupted(tmp_path, capsys):
    full, part = tmp_path / "full.npz", tmp_path / "part.npz"
    run_cli(capsys, "train", "iris", "--epochs", "20", "--save", str(full), "--json")
    run_cli(capsys, "train", "iris", "--epochs", "8", "--save", str(part), "--json")
    code, out = run_cli(capsys, "train", "iris", "--epochs", "20", "--resume", str(part),
                        "--save", str(part), "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["epochs_run"] == 12
    a, b = np.load(full), np.load(part)
    assert int(a["meta/epoch"]) == int(b["meta/epoch"]) == 20
    for k in a.files:
        if a[k].dtype.kind in "US":
            assert a[k] == b[k]
            continue
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_checkpoint_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    m = IrisMLP()
    save_checkpoint(path, m, epoch=1)
    before = path.read_bytes()

    def explode(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, m, epoch=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # no temp file left behind
    monkeypatch.undo()
    meta = load_checkpoint(path, IrisMLP())
    assert meta["epoch"] == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    X, y, Xt, yt = load_iris()
    mg.manual_seed(0)
    model = IrisMLP()
    opt = Adam(model.parameters(), lr=1e-3)
    ck = tmp_path / "ck.npz"

    def poison(epoch, step, loss):
        if epoch == 2 and step == 0:
            model[0].weight.data[0, 0] = np.nan

    with DataLoader((X, y), batch_size=64, seed=0, num_workers=2) as loader:
        with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 3.*ck\.npz"):
            fit(model, opt, loader, (Xt, yt), 10, save=ck, log=lambda s: None,
                on_step=poison)
    restored = IrisMLP()
    meta = load_checkpoint(ck, restored)
    assert meta["epoch"] == 2
    assert all(np.isfinite(p.data).all() for p in restored.parameters())


def test_bad_arguments_exit_nonzero(capsys):
    assert cli.main(["train", "iris", "--epochs", "0"]) == 2
    assert "--epochs must be positive" in capsys.readouterr().err
    # argparse's errors are one line too, and main() returns their status (it used to
    # raise SystemExit); a missing checkpoint is exit 2, no longer a ValueError traceback
    assert cli.main(["train", "nosuchtask"]) == 2
    assert "invalid choice: 'nosuchtask'" in capsys.readouterr().err
    assert cli.main(["train", "iris", "--resume", "/nonexistent/ck.npz"]) == 2
    assert "/nonexistent/ck.npz does not exist" in capsys.readouterr().err


def test_console_script_runs_as_documented():
    exe = [sys.executable, "-m", "minigrad.cli"]
    r = subprocess.run(exe + ["train", "iris", "--epochs", "3", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["epochs"] == 3
    r = subprocess.run(exe + ["info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "numba threads" in r.stdout and "threading layer" in r.stdout
    assert "cupy/gpu" in r.stdout


def test_device_cuda_without_gpu_says_so(capsys):
    from minigrad.backend import gpu_available

    if gpu_available()[0]:
        pytest.skip("a GPU is present")
    assert cli.main(["train", "iris", "--device", "cuda", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda is not usable here" in err and "CuPy" in err
