"""Hogwild: lock-free threads on one set of shared parameters."""
import numpy as np
from dist_helpers import blobs, mlp

from minigrad.distributed import train_distributed
from minigrad.distributed.common import compute_gradients, shared_view


def test_shared_view_shares_arrays_but_not_gradients():
    model = mlp()
    view = shared_view(model)
    for p, q in zip(view.parameters(), model.parameters(), strict=True):
        assert p is not q and p.data is q.data
    X, y = blobs(8)
    compute_gradients(view, X, y)
    assert all(p.grad is not None for p in view.parameters())
    assert all(q.grad is None for q in model.parameters())
    view.parameters()[0].data -= 1.0  # in place: the shared array moves
    np.testing.assert_array_equal(view.parameters()[0].data, model.parameters()[0].data)


def test_hogwild_learns_on_shared_parameters(task):
    train, test = task
    model = mlp()
    before = [p.data.copy() for p in model.parameters()]
    s = train_distributed("hogwild", model, train, test, workers=4, epochs=4, batch_size=64,
                          lr=0.05)
    assert s["test_accuracy"] > 0.8
    assert s["steps"] == 4 * 4 * 16  # every thread steps on its slice of every batch
    assert s["bytes_sent"] == 0 and s["dense_bytes"] is None
    # the caller's model is the one that was trained (shared, not copied)
    assert any(not np.array_equal(b, p.data)
               for b, p in zip(before, model.parameters(), strict=True))
