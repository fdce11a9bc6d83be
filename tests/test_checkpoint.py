"""Checkpoints: clear errors on read, temp files a killed save left behind, what "good" means."""
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from minigrad import cli
from minigrad.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    check_writable,
    load_checkpoint,
    read_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from minigrad.models import IrisMLP
from minigrad.optim import SGD, Adam


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_meta_round_trips_and_may_use_the_key_model(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, IrisMLP(), meta={"model": "mlp", "task": "iris", "epoch": 3,
                                           "skipped": None})
    _, _, meta = read_checkpoint(path)
    assert meta == {"model": "mlp", "task": "iris", "epoch": 3}


def test_a_checkpoint_is_readable_by_others_like_any_file(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, IrisMLP())
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_mismatched_meta_is_refused_before_loading(tmp_path):
    path = tmp_path / "ck.npz"
    source = IrisMLP()
    save_checkpoint(path, source, Adam(source.parameters()), meta={"task": "iris",
                                                                    "optimizer": "adam"})
    target = IrisMLP()
    before = [p.data.copy() for p in target.parameters()]
    with pytest.raises(CheckpointMismatch, match="--optimizer adam.*--optimizer sgd"):
        load_checkpoint(path, target, SGD(target.parameters()), expect={"optimizer": "sgd"})
    for p, b in zip(target.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.data, b)  # nothing was loaded


def test_old_checkpoints_without_optimizer_meta_are_recognised(tmp_path):
    path = tmp_path / "ck.npz"
    m = IrisMLP()
    opt = Adam(m.parameters())
    from minigrad import functional as F
    from minigrad.tensor import Tensor

    F.cross_entropy(m(Tensor(np.ones((2, 4), np.float32))), np.array([0, 1])).backward()
    opt.step()
    save_checkpoint(path, m, opt)  # no meta at all
    assert read_checkpoint(path)[2]["optimizer"] == "adam"


def test_a_model_that_does_not_fit_is_a_mismatch(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, IrisMLP(hidden=7))
    with pytest.raises(CheckpointMismatch, match="does not fit this model"):
        load_checkpoint(path, IrisMLP())


def test_a_zip_without_weights_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="holds no model weights"):
        read_checkpoint(path)


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "dir" / "ck.npz")  # creates the directories
    assert (tmp_path / "new" / "dir").is_dir()
    assert os.listdir(tmp_path / "new" / "dir") == []  # and leaves no probe file
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot save a checkpoint"):
        check_writable(blocker / "ck.npz")


# ---- temp files of a killed save -------------------------------------------------------------
def test_stale_temp_files_of_the_same_checkpoint_are_removed_on_save(tmp_path):
    target = tmp_path / "ck.npz"
    old = time.time() - 3600
    stale = tmp_path / f".ck.npz.minigrad-tmp-{dead_pid()}-abc123.npz"
    fresh = tmp_path / f".ck.npz.minigrad-tmp-{dead_pid()}-def456.npz"  # written just now
    alive = tmp_path / f".ck.npz.minigrad-tmp-{os.getppid()}-ghi789.npz"  # a live process
    other = tmp_path / f".other.npz.minigrad-tmp-{dead_pid()}-jkl012.npz"  # other target
    foreign = tmp_path / ".tmp-unrelated.npz"  # not named by us
    for f in (stale, fresh, alive, other, foreign):
        f.write_bytes(b"partial")
    for f in (stale, alive, other, foreign):
        os.utime(f, (old, old))
    save_checkpoint(target, IrisMLP(), epoch=1)
    left = set(os.listdir(tmp_path))
    assert stale.name not in left
    assert {"ck.npz", fresh.name, alive.name, other.name, foreign.name} <= left
    assert remove_stale_temp_files(target) == []


def test_kill_9_during_save_leaves_a_temp_file_the_next_save_removes(tmp_path):
    target = tmp_path / "ck.npz"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from minigrad.checkpoint import save_checkpoint
        from minigrad.models import IrisMLP

        real_savez = np.savez
        def savez_then_die(f, **arrays):
            real_savez(f, **arrays)
            os.kill(os.getpid(), signal.SIGKILL)   # killed before the rename
        np.savez = savez_then_die
        save_checkpoint({str(target)!r}, IrisMLP(), epoch=1)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert r.returncode == -9
    leftovers = [n for n in os.listdir(tmp_path) if n != "ck.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ck.npz.minigrad-tmp-")
    assert not target.exists()
    # written before this process started, as a file left by an earlier run would be (this
    # pytest process may have been running for many minutes already)
    from minigrad import checkpoint

    old = checkpoint._PROCESS_START - 60
    os.utime(tmp_path / leftovers[0], (old, old))
    save_checkpoint(target, IrisMLP(), epoch=2)
    assert os.listdir(tmp_path) == ["ck.npz"]


# ---- a good checkpoint after divergence -------------------------------------------------------
def test_the_checkpoint_kept_after_divergence_is_good(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    sgd = ["train", "iris", "--optimizer", "sgd", "--json"]
    assert cli.main(sgd + ["--lr", "0.05", "--epochs", "3", "--save", str(ck)]) == 0
    capsys.readouterr()
    # lr 1e6 blows the weights up to ~1e20 for two epochs before the loss becomes NaN
    assert cli.main(sgd + ["--lr", "1e6", "--epochs", "20", "--resume", str(ck),
                           "--save", str(ck)]) == 3
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["status"] == "diverged" and summary["checkpoint_epoch"] == 3
    assert "not checkpointed" in captured.err
    assert "the last good checkpoint (epoch 3) is kept" in captured.err.splitlines()[-1]
    model_state, _, meta = read_checkpoint(ck)
    assert meta["epoch"] == 3
    assert max(float(np.abs(v).max()) for v in model_state.values()) < 100
    # and training on from it works at once
    assert cli.main(sgd + ["--lr", "0.05", "--epochs", "4", "--resume", str(ck)]) == 0
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(after["final_loss"]) and after["final_loss"] < 1.0


def test_a_run_that_never_had_a_good_epoch_writes_no_checkpoint(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    code = cli.main(["train", "iris", "--optimizer", "sgd", "--lr", "1e6", "--epochs", "20",
                     "--save", str(ck), "--json"])
    assert code == 3 and not ck.exists()
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["checkpoint_epoch"] is None and summary["diverged_at"]["loss"] == "nan"
    assert "nothing was saved" in captured.err.strip().splitlines()[-1]
