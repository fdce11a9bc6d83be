"""The training loop: one function, `fit`, used by the CLI for every task.

    for epoch:                                   loader order = f(seed, epoch), so a resumed
        for x, y in loader:                      run sees the same batches
            loss = cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        evaluate on the test split; checkpoint (atomically) if asked

A NaN or infinite loss stops training with `TrainingDiverged`; the checkpoint on disk is
then still the one from the last good epoch, since checkpoints are written only after an
epoch finishes with finite losses.
"""
import math
import time

import numpy as np

from . import functional as F
from .allocator import retain_freed_memory
from .backend import to_device
from .checkpoint import load_checkpoint, save_checkpoint
from .tensor import Tensor, no_grad


class TrainingDiverged(RuntimeError):
    pass


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


def fit(model, optimizer, loader, test_data, epochs, *, eval_transform=None, device="cpu",
        save=None, resume=None, meta=None, log=print, progress=False, on_step=None):
    """Train for `epochs` epochs (counting those a resumed checkpoint already did).

    Returns a summary dict: per-epoch history, final accuracies, timings and the share of
    the epoch the loop spent waiting on the loader.
    """
    meta = dict(meta or {})
    retain_freed_memory()  # reuse each step's large buffers instead of faulting them in again
    start_epoch = 0
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer)
        start_epoch = int(state.get("epoch", 0))
        log(f"resumed from {resume} at epoch {start_epoch}")
    if device != "cpu":
        model.to(device)
    X_test, y_test = test_data
    history = []  # one dict per epoch run
    train_seconds = wait_seconds = 0.0
    last_loss = float("nan")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(epochs - start_epoch) * len(loader), unit="batch", leave=False,
                   dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, epochs):
            loader.set_epoch(epoch)
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            for step, (xb, yb) in enumerate(loader):
                x, y = Tensor(to_device(xb, device)), to_device(yb, device)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss_value = float(loss.data)
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; "
                        "training stopped" + (f", last good checkpoint kept at {save}"
                                              if save else ""))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                n = len(yb)
                loss_sum += loss_value * n
                correct += int((logits.data.argmax(axis=1) == y).sum())
                seen += n
                if on_step is not None:
                    on_step(epoch, step, loss_value)
                if bar is not None:
                    bar.update(1)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            wait_seconds += loader.wait_seconds
            last_loss = loss_sum / max(seen, 1)
            test_acc = evaluate(model, X_test, y_test, transform=eval_transform, device=device)
            row = dict(epoch=epoch + 1, loss=last_loss, train_accuracy=correct / max(seen, 1),
                       test_accuracy=test_acc, seconds=epoch_seconds,
                       loader_wait_share=loader.wait_seconds / max(epoch_seconds, 1e-12))
            history.append(row)
            log(f"epoch {epoch + 1:3d}/{epochs}  loss {last_loss:.4f}  "
                f"train acc {row['train_accuracy']:.4f}  test acc {test_acc:.4f}  "
                f"{epoch_seconds:.2f}s  (loader wait {100 * row['loader_wait_share']:.1f}%)")
            if save is not None:
                save_checkpoint(save, model, optimizer, epoch=epoch + 1, **meta)
    finally:
        if bar is not None:
            bar.close()
    ran = len(history)
    final = history[-1] if history else {}
    if "test_accuracy" not in final:  # nothing left to run (e.g. resumed at the last epoch)
        final = dict(final, test_accuracy=evaluate(model, X_test, y_test,
                                                   transform=eval_transform, device=device))
    return {
        "epochs": epochs,
        "epochs_run": ran,
        "final_loss": last_loss,
        "train_accuracy": final.get("train_accuracy"),
        "test_accuracy": final["test_accuracy"],
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / ran if ran else 0.0,
        "loader_wait_share": wait_seconds / train_seconds if train_seconds else 0.0,
        "history": history,
    }
