"""Checkpoints as .npz files, written atomically, read back with clear errors.

Writing: the arrays go to a temporary file beside the destination, which is flushed and
fsynced, then renamed over it (`os.replace` is atomic on POSIX and Windows), so a crash
mid-write leaves the previous checkpoint intact and never a half-written one. The temporary
file is named `.<checkpoint name>.minigrad-tmp-<pid>-<random>.npz`, so one left behind by a
killed process (`kill -9` mid-write) is recognisable: the next save to the same checkpoint
deletes such files when they are older than the saving process and their process is gone.

Layout: "model/<param name>" arrays, "optim/<key>" optimizer state, "meta/<key>" scalars
(epoch, step, seed, task, model, optimizer, ...).

Reading: every way a file can fail to be a checkpoint (missing, empty, not a zip file,
truncated, a bad CRC, no model weights) raises `CheckpointError` with one sentence that says
what is wrong; a checkpoint from another task, model or optimizer raises
`CheckpointMismatch` before anything is loaded.
"""
import contextlib
import os
import re
import tempfile
import time
import zipfile
import zlib

import numpy as np

_PROCESS_START = time.time()  # temp files older than this cannot be this process's
_TMP_MARK = ".minigrad-tmp-"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message says which file and why."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint that belongs to another task, model or optimizer."""


def _tmp_prefix(path):
    return "." + os.path.basename(path) + _TMP_MARK


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or we cannot tell: leave its file alone
    return True


def remove_stale_temp_files(path):
    """Delete temp files a killed save to `path` left behind; return their paths.

    A file counts as stale only when its name is this checkpoint's temp-file name, it was
    last written before this process started, and the process that wrote it (its pid is in
    the name) is not running. Anything else, including another live run's file, is kept.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(_tmp_prefix(path)) + r"(\d+)-[^/]*\.npz\Z")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        full = os.path.join(directory, name)
        try:
            if os.stat(full).st_mtime >= _PROCESS_START or _pid_alive(int(m.group(1))):
                continue
            os.unlink(full)
        except OSError:
            continue
        removed.append(full)
    return removed


def _mkstemp_for(path):
    directory = os.path.dirname(os.path.abspath(path))
    return tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", suffix=".npz",
                            dir=directory)


def check_writable(path):
    """Raise CheckpointError now if `path` could not be saved to later.

    Creates the directory (as saving would) and a temp file in it, then removes the file.
    Called before training starts, so a typo in --save does not cost a whole epoch.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"cannot save a checkpoint to {path}: it is a directory")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise CheckpointError(f"cannot save a checkpoint to {path}: {ancestor} is a file, "
                              "not a directory")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd, tmp = _mkstemp_for(path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CheckpointError(f"cannot save a checkpoint to {path}: "
                              f"{e.strerror or e}") from e


def save_checkpoint(path, model, optimizer=None, *, meta=None, **more_meta):
    """Write model (and optimizer) state and the meta values to `path`, atomically.

    Meta values are scalars or strings, given as the `meta` dict (which may use any key,
    "model" included) and/or as keywords; None values are left out.
    """
    meta = {**(meta or {}), **more_meta}
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays.update({f"meta/{k}": np.asarray(v) for k, v in meta.items() if v is not None})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = _mkstemp_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a checkpoint is a file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _open(path):
    """The opened NpzFile, or CheckpointError saying what the file is instead."""
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise CheckpointError(f"checkpoint {shown} does not exist")
    if os.path.isdir(shown):
        raise CheckpointError(f"checkpoint {shown} is a directory, not a file")
    try:
        with open(shown, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {shown}: {e.strerror or e}") from e
    if not head:
        raise CheckpointError(f"checkpoint {shown} is empty (0 bytes)")
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{shown} is not a minigrad checkpoint (not an .npz file)")
    try:
        return np.load(shown, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise CheckpointError(f"checkpoint {shown} is corrupt or truncated ({e})") from e


def read_checkpoint(path):
    """(model_state, optim_state, meta) from `path`, every array read and CRC-checked."""
    z = _open(path)
    try:
        with z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise CheckpointError(f"checkpoint {os.fspath(path)} is corrupt or truncated "
                              f"({e})") from e
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if not model_state:
        raise CheckpointError(f"{os.fspath(path)} holds no model weights: not a minigrad "
                              "checkpoint")
    optim_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    meta = {k[len("meta/"):]: v.item() if v.ndim == 0 else v
            for k, v in arrays.items() if k.startswith("meta/")}
    if "optimizer" not in meta and optim_state:  # checkpoints from before meta/optimizer
        kinds = {k.split(".", 1)[-1] for k in optim_state}
        if "exp_avg" in kinds:
            meta["optimizer"] = "adam"
        elif "momentum_buffer" in kinds:
            meta["optimizer"] = "sgd"
    return model_state, optim_state, meta


def check_meta(path, meta, expect):
    """CheckpointMismatch if `meta` contradicts `expect` ({key: value}) on a stored key."""
    for key, want in (expect or {}).items():
        have = meta.get(key)
        if have is None or want is None or have == want:
            continue
        raise CheckpointMismatch(f"checkpoint {os.fspath(path)} was made with --{key} "
                                 f"{have}, this run has --{key} {want}")


def load_checkpoint(path, model, optimizer=None, *, expect=None):
    """Restore model (and optimizer) state; return the meta dict.

    `expect` ({"task": "iris", "optimizer": "adam", ...}) is checked against the stored
    meta first: a contradiction raises CheckpointMismatch and nothing is loaded.
    """
    model_state, optim_state, meta = read_checkpoint(path)
    check_meta(path, meta, expect)
    try:
        model.load_state_dict(model_state)
        if optimizer is not None and optim_state:
            optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError, IndexError) as e:
        raise CheckpointMismatch(f"checkpoint {os.fspath(path)} does not fit this model "
                                 f"({e})") from e
    return meta
