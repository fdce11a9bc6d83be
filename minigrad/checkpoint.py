"""Checkpoints as .npz files, written atomically.

The file is written to a temporary name in the destination directory, flushed and fsynced,
then renamed over the destination (`os.replace` is atomic on POSIX and Windows), so a crash
mid-write leaves the previous checkpoint intact and never a half-written one.

Layout: "model/<param name>" arrays, "optim/<key>" optimizer state, "meta/<key>" scalars
(epoch, seed, task, ...).
"""
import os
import tempfile

import numpy as np


def save_checkpoint(path, model, optimizer=None, **meta):
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays.update({f"meta/{k}": np.asarray(v) for k, v in meta.items()})
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path, model, optimizer=None):
    """Restore model (and optimizer) state; return the meta dict."""
    try:
        z = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"load_checkpoint: cannot read {path!s}: {e}") from e
    with z:
        model_state = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
        optim_state = {k[len("optim/"):]: z[k] for k in z.files if k.startswith("optim/")}
        meta = {k[len("meta/"):]: z[k].item() if z[k].ndim == 0 else z[k]
                for k in z.files if k.startswith("meta/")}
    model.load_state_dict(model_state)
    if optimizer is not None and optim_state:
        optimizer.load_state_dict(optim_state)
    return meta
