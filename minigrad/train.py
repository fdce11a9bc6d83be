"""The training loop: one function, `fit`, used by the CLI for every task.

    for epoch:                                   loader order = f(seed, epoch), so a resumed
        lr = schedule(epoch)                     run sees the same batches
        for x, y in loader:
            loss = cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        evaluate on the test (and validation) split
        checkpoint (atomically) if asked and the epoch is *good*

Divergence. A NaN or infinite loss stops training with `TrainingDiverged`. An epoch is
*good*, and only then checkpointed, when every weight is finite and its mean loss is at most
GOOD_LOSS_FACTOR (4) times the lowest epoch loss so far (before any epoch has finished: the
loss of the first batch, i.e. of the untrained or just-resumed model). So the checkpoint on
disk after a divergence is the last epoch that was still learning, not one whose weights had
already blown up to 1e36 a step before the NaN.

Resuming. `fit(resume=path)` restores the weights, the optimizer's state (moments, momentum
buffers) and the epoch and step counters. Hyper-parameters are the caller's: the learning
rate (and its schedule) passed to `fit` win over the one stored in the checkpoint. `epochs`
is the total target, counting the epochs the checkpoint already did (PyTorch examples'
habit): resuming an epoch-8 checkpoint with epochs=20 trains epochs 9..20.

Training log. With `train_log=TrainingLog(path)`, fit writes one JSON object per line as it
goes (flushed each time, so a killed or diverged run leaves its history): "step" events
every `log_interval` steps, one "epoch" event per epoch, and a "diverged" event. The caller
writes "start" and "end". `read_log(path)` reads such a file back.
"""
import contextlib
import json
import math
import os
import sys
import threading
import time

import numpy as np

from . import functional as F
from .allocator import retain_freed_memory
from .backend import get_array_module, to_device
from .checkpoint import load_checkpoint, save_checkpoint
from .tensor import Tensor, no_grad

GOOD_LOSS_FACTOR = 4.0
LR_SCHEDULES = ("constant", "step", "cosine")
STEP_MILESTONES = (0.5, 0.75)  # the step schedule multiplies lr by STEP_GAMMA at these
STEP_GAMMA = 0.1               # shares of the epochs
# The checkpoint's meta values that must agree with the run that resumes it.
RESUME_MUST_MATCH = ("task", "model", "optimizer", "val_split")


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) stopped being finite. `summary` is the run so far."""

    def __init__(self, message, *, epoch=None, step=None, loss=None, summary=None):
        super().__init__(message)
        self.epoch, self.step, self.loss, self.summary = epoch, step, loss, summary


def evaluate(model, X, y, batch_size=1000, transform=None, device="cpu"):
    """Accuracy of `model` on arrays X, y, in batches, without recording a graph."""
    model.eval()
    correct = 0
    with no_grad():
        for i in range(0, len(X), batch_size):
            xb, yb = X[i:i + batch_size], y[i:i + batch_size]
            if transform is not None:
                xb, yb = transform((xb, yb))
            logits = model(Tensor(to_device(xb, device)))
            pred = to_device(logits.data.argmax(axis=1), "cpu")
            correct += int((pred == np.asarray(yb)).sum())
    model.train()
    return correct / max(len(X), 1)


def make_optimizer(name, params, lr, momentum=0.9):
    from . import optim

    if name == "adam":
        return optim.Adam(params, lr=lr)
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}: expected 'adam' or 'sgd'")


def step_milestones(epochs):
    """The 0-based epochs from which the step schedule has cut lr once, then twice."""
    return tuple(max(1, int(share * epochs)) for share in STEP_MILESTONES)


def learning_rate(schedule, lr, epoch, epochs):
    """The learning rate of 0-based `epoch` out of `epochs` under `schedule`.

    constant: lr.  step: lr * 0.1 from epoch int(epochs/2), lr * 0.01 from int(3*epochs/4)
    (each at least the second epoch).  cosine: lr * (1 + cos(pi * epoch / epochs)) / 2.
    """
    if schedule in (None, "constant"):
        return lr
    if schedule == "step":
        return lr * STEP_GAMMA ** sum(epoch >= m for m in step_milestones(epochs))
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise ValueError(f"unknown lr schedule {schedule!r}: expected one of {LR_SCHEDULES}")


# ---- the training log ----------------------------------------------------------------------
class TrainingLog:
    """A JSON-lines file of training events, each line written and flushed as it happens.

    mode "w" starts a new file; "a" appends (a resumed run continues its history).
    """

    def __init__(self, path, mode="w"):
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, mode, encoding="utf-8")

    def write(self, event, **fields):
        line = json.dumps(json_safe({"event": event, **fields}), allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_log(path):
    """Yield the events (dicts) of a --log file in order.

    A last line cut short (the run was killed mid-write) is skipped; a bad line anywhere
    else raises ValueError naming it.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                return  # truncated by a kill: everything before it is intact
            raise ValueError(f"{path}, line {number}: not a JSON object ({e})") from None


def json_safe(obj):
    """`obj` with every non-finite float as a string ("nan", "inf"): JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ---- first-run compilation notice ----------------------------------------------------------
@contextlib.contextmanager
def announce_compilation(write, message="compiling kernels (first run only)"):
    """Call `write(message)` once, the first time Numba compiles a function in this block.

    Numba fires its "numba:compile" event only on a cache miss: a function found in its
    on-disk cache (`cache=True`) loads without it. So the notice appears when the cache is
    cold (the first run, or the first after the kernels' sources changed) and not otherwise.
    """
    try:
        from numba.core import event
    except ImportError:  # pragma: no cover - numba is a dependency
        yield
        return
    lock, said = threading.Lock(), []

    class Notice(event.Listener):
        def on_start(self, ev):
            with lock:
                if said:
                    return
                said.append(True)
            write(message)

        def on_end(self, ev):
            pass

    listener = Notice()
    event.register("numba:compile", listener)
    try:
        yield
    finally:
        event.unregister("numba:compile", listener)


def _weights_finite(model):
    for p in model.parameters():
        xp = get_array_module(p.data)
        if not bool(xp.isfinite(p.data).all()):
            return False
    return True


def fit(model, optimizer, loader, test_data, epochs, *, eval_transform=None, device="cpu",
        save=None, resume=None, meta=None, log=print, progress=False, on_step=None,
        val_data=None, lr=None, lr_schedule="constant", train_log=None, log_interval=0):
    """Train until `epochs` epochs in total (counting those a resumed checkpoint already did).

    lr: the base learning rate (default: the optimizer's as passed in; a resumed
    checkpoint's never replaces it); lr_schedule: "constant", "step" or "cosine" (see
    `learning_rate`). val_data: (X, y) scored each epoch as val_accuracy. meta: saved in
    each checkpoint; on resume its RESUME_MUST_MATCH keys are checked against the
    checkpoint's (CheckpointMismatch). train_log: a TrainingLog for step/epoch/diverged
    events, with a step event every `log_interval` steps (0: none).

    Returns a summary dict: per-epoch history, final accuracies, timings, throughput and
    the share of the epoch the loop spent waiting on the loader.
    """
    meta = dict(meta or {})
    base_lr = optimizer.lr if lr is None else lr
    learning_rate(lr_schedule, base_lr, 0, epochs)  # an unknown schedule fails here
    retain_freed_memory()  # reuse each step's large buffers instead of faulting them in again
    start_epoch, step, best_loss, saved_epoch = 0, 0, None, None
    if resume is not None:
        expect = {k: meta[k] for k in RESUME_MUST_MATCH if k in meta}
        state = load_checkpoint(resume, model, optimizer, expect=expect)
        start_epoch = int(state.get("epoch", 0))
        step = int(state.get("step", start_epoch * len(loader)))
        best_loss = state.get("best_loss")
        if save is not None and os.path.abspath(save) == os.path.abspath(resume):
            saved_epoch = start_epoch
        log(f"resumed from {resume} at epoch {start_epoch}")
        if start_epoch >= epochs:
            log(f"nothing to train: the checkpoint has done {start_epoch} epochs and --epochs "
                f"(the total) is {epochs}")
    if device != "cpu":
        model.to(device)
    X_test, y_test = test_data
    history = []  # one dict per epoch run
    train_seconds = wait_seconds = 0.0
    images = 0
    first_loss = None
    t_begin = time.perf_counter()
    write = log
    tqdm = None
    if progress:
        from tqdm import tqdm

        def write(s):
            tqdm.write(s, file=sys.stderr)

    def summary(**extra):
        ran = len(history)
        final = history[-1] if history else {}
        out = {
            "epochs": start_epoch + ran,
            "epochs_run": ran,
            "start_epoch": start_epoch,
            "final_loss": final.get("loss"),
            "best_loss": best_loss,
            "train_accuracy": final.get("train_accuracy"),
            "test_accuracy": final.get("test_accuracy"),
            "val_accuracy": final.get("val_accuracy"),
            "final_lr": optimizer.lr,
            "train_seconds": train_seconds,
            "seconds_per_epoch": train_seconds / ran if ran else 0.0,
            "images_per_second": images / train_seconds if train_seconds else 0.0,
            "loader_wait_share": wait_seconds / train_seconds if train_seconds else 0.0,
            "steps": step,
            "checkpoint_epoch": saved_epoch,
            "history": history,
        }
        out.update(extra)
        return out

    def diverged(epoch, what, loss_value):
        kept = ""
        if save is not None:
            if saved_epoch is not None:
                kept = f"; the last good checkpoint (epoch {saved_epoch}) is kept at {save}"
            elif history:
                kept = f"; no epoch passed the check, so nothing was saved to {save}"
            else:
                kept = f"; no epoch finished, so nothing was saved to {save}"
        message = f"{what} at epoch {epoch + 1} (step {step}); training stopped{kept}"
        if train_log is not None:
            train_log.write("diverged", epoch=epoch + 1, step=step,
                            loss=None if loss_value is None else str(loss_value),
                            message=message)
        return TrainingDiverged(
            message, epoch=epoch + 1, step=step, loss=loss_value,
            summary=summary(diverged=True, diverged_at={
                "epoch": epoch + 1, "step": step,
                "loss": None if loss_value is None else str(loss_value)}))

    for epoch in range(start_epoch, epochs):
        optimizer.lr = learning_rate(lr_schedule, base_lr, epoch, epochs)
        loader.set_epoch(epoch)
        model.train()
        bar = None
        if tqdm is not None:
            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                       leave=False, dynamic_ncols=True, file=sys.stderr)
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        try:
            for i, (xb, yb) in enumerate(loader):
                step += 1
                x, y = Tensor(to_device(xb, device)), to_device(yb, device)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss_value = float(loss.data)
                if not math.isfinite(loss_value):
                    raise diverged(epoch, f"loss became {loss_value}", loss_value)
                if first_loss is None:
                    first_loss = loss_value
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                n = len(yb)
                loss_sum += loss_value * n
                correct += int((logits.data.argmax(axis=1) == y).sum())
                seen += n
                if on_step is not None:
                    on_step(epoch, i, loss_value)
                if bar is not None or (train_log is not None and log_interval
                                       and step % log_interval == 0):
                    elapsed = time.perf_counter() - t0
                    running, ips = loss_sum / seen, seen / max(elapsed, 1e-12)
                    if bar is not None:
                        bar.set_postfix_str(f"loss {running:.4f}, {ips:,.0f} img/s",
                                            refresh=False)
                        bar.update(1)
                    if train_log is not None and log_interval and step % log_interval == 0:
                        train_log.write("step", epoch=epoch + 1, step=step, loss=running,
                                        lr=optimizer.lr,
                                        seconds=time.perf_counter() - t_begin,
                                        images_per_second=ips)
        finally:
            if bar is not None:
                bar.close()  # before the epoch line, so the two never share a line
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        wait_seconds += loader.wait_seconds
        images += seen
        epoch_loss = loss_sum / max(seen, 1)
        if not _weights_finite(model):
            raise diverged(epoch, "a weight became non-finite", None)
        test_acc = evaluate(model, X_test, y_test, transform=eval_transform, device=device)
        val_acc = None
        if val_data is not None:
            val_acc = evaluate(model, *val_data, transform=eval_transform, device=device)
        stall = loader.wait_seconds / max(epoch_seconds, 1e-12)
        row = dict(epoch=epoch + 1, loss=epoch_loss, train_accuracy=correct / max(seen, 1),
                   test_accuracy=test_acc, val_accuracy=val_acc, lr=optimizer.lr,
                   seconds=epoch_seconds, images_per_second=seen / max(epoch_seconds, 1e-12),
                   loader_wait_share=stall)
        history.append(row)
        if train_log is not None:
            train_log.write("epoch", epoch=epoch + 1, step=step, loss=epoch_loss,
                            train_accuracy=row["train_accuracy"], test_accuracy=test_acc,
                            val_accuracy=val_acc, lr=optimizer.lr,
                            seconds=time.perf_counter() - t_begin, epoch_seconds=epoch_seconds,
                            images_per_second=row["images_per_second"], loader_stall=stall)
        val_text = f"  val acc {val_acc:.4f}" if val_acc is not None else ""
        log(f"epoch {epoch + 1:3d}/{epochs}  loss {epoch_loss:.4f}  "
            f"train acc {row['train_accuracy']:.4f}  test acc {test_acc:.4f}{val_text}  "
            f"{epoch_seconds:.2f}s  {row['images_per_second']:,.0f} img/s  "
            f"(loader wait {100 * stall:.1f}%)")
        reference = best_loss if best_loss is not None else first_loss
        good = reference is None or epoch_loss <= GOOD_LOSS_FACTOR * reference
        if good:
            best_loss = epoch_loss if best_loss is None else min(best_loss, epoch_loss)
        if save is not None:
            if good:
                save_checkpoint(save, model, optimizer, meta={
                    **meta, "epoch": epoch + 1, "step": step, "best_loss": best_loss})
                saved_epoch = epoch + 1
            else:
                kept = (f"stays at epoch {saved_epoch}" if saved_epoch is not None
                        else "is not written")
                what = "best epoch loss" if best_loss is not None else "first batch's loss"
                write(f"epoch {epoch + 1}: loss {epoch_loss:.4g} is more than "
                      f"{GOOD_LOSS_FACTOR:g}x the {what} {reference:.4g}, so it is not "
                      f"checkpointed (the checkpoint {kept})")
    if not history:  # nothing left to run (resumed at or past the last epoch)
        history_free = {
            "test_accuracy": evaluate(model, X_test, y_test, transform=eval_transform,
                                      device=device),
            "val_accuracy": (evaluate(model, *val_data, transform=eval_transform,
                                      device=device) if val_data is not None else None)}
        return summary(**history_free)
    return summary()
