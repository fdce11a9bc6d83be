"""Asynchronous SGD with a parameter server: learning, staleness, and faults."""
from collections import Counter

import numpy as np
import pytest
from dist_helpers import mlp

from minigrad.distributed import train_distributed
from minigrad.distributed.async_ps import Faults, WorkerFailure


def run_async(task, workers=3, faults=None, **kw):
    train, test = task
    opts = dict(workers=workers, epochs=1, batch_size=32, lr=0.1, timeout=5.0,
                ack_timeout=2.0, faults=faults, details=True)
    opts.update(kw)
    return train_distributed("async", mlp(), train, test, **opts)


def check_exactly_once(summary):
    """Every update the server applied is unique, and each worker's view of what was
    applied (the replies it received) is exactly the server's."""
    server, workers = summary["details"][0], summary["details"][1:]
    keys = [(w, seq) for w, seq, *_ in server["updates"]]
    assert len(keys) == len(set(keys)), "an update was applied twice"
    assert server["version"] == len(keys) == summary["updates_applied"]
    per_worker = Counter(w for w, _ in keys)
    for rank, res in enumerate(workers, start=1):
        if isinstance(res, BaseException):
            continue
        assert res["applied_seqs"] == sorted(seq for w, seq in keys if w == rank)
        assert res["applied"] == per_worker[rank]
    return server


def test_async_learns_and_records_staleness(task):
    s = run_async(task, epochs=3)
    assert s["test_accuracy"] > 0.8
    assert s["workers"] == 3 and s["dead_workers"] == [] and s["stalled_workers"] == []
    assert set(s["worker_status"].values()) == {"done"}
    server = check_exactly_once(s)
    # each worker pushes once per global batch (its slice of it), 3 epochs x 32 batches
    assert s["updates_applied"] == 3 * 3 * 32 and s["updates_dropped"] == 0
    st = [u[3] for u in server["updates"]]
    assert s["staleness_max"] == max(st) and s["staleness_mean"] == pytest.approx(np.mean(st))
    # staleness-aware rate: lr / max(1, s)
    for _, _, _, stale, lr in server["updates"]:
        assert lr == pytest.approx(0.1 / max(1, stale))
    assert s["bytes_sent"] > 0 and s["compression_ratio"] is None


def test_staleness_is_server_version_minus_pulled_version(task):
    server = check_exactly_once(run_async(task, workers=2))
    for i, (_, _, pulled, stale, _) in enumerate(server["updates"]):
        assert stale == i - pulled  # version at apply time is the update's index


def test_plain_rate_without_staleness_awareness(task):
    server = check_exactly_once(run_async(task, staleness_aware=False))
    assert {round(u[4], 9) for u in server["updates"]} == {0.1}


def test_staleness_bound_drops_stale_updates(task):
    s = run_async(task, workers=3, staleness_bound=0)
    server = check_exactly_once(s)
    assert all(u[3] <= 0 for u in server["updates"])
    dropped = sum(w["updates_dropped"] for w in server["workers"].values())
    assert s["updates_dropped"] == dropped
    assert s["updates_applied"] + s["updates_dropped"] == 3 * 32
    workers = s["details"][1:]
    assert sum(w["dropped"] for w in workers) == dropped


def test_a_worker_that_dies_does_not_stop_the_others(task):
    faults = Faults(die={1: 3})
    s = run_async(task, workers=3, faults=faults)
    assert isinstance(s["details"][1], WorkerFailure)
    assert s["dead_workers"] == [1]
    assert s["worker_status"] == {1: "dead", 2: "done", 3: "done"}
    server = check_exactly_once(s)
    assert sorted(seq for w, seq, *_ in server["updates"] if w == 1) == [1, 2, 3]
    assert s["updates_applied"] == 3 + 2 * 32
    assert s["test_accuracy"] > 0.5  # chance is 0.25


def test_a_stalled_worker_is_reported_and_the_run_finishes(task):
    faults = Faults(stall={2: (2, 1.5)})  # worker 2 sleeps 1.5 s before its 3rd step
    s = run_async(task, workers=3, faults=faults, timeout=0.4, ack_timeout=1.0)
    assert s["stalled_workers"] == [2]
    assert s["worker_status"][1] == s["worker_status"][3] == "done"
    # it woke after the server had finished: its late push was refused with STOP, not lost
    assert s["worker_status"][2] in ("stopped", "done")
    server = check_exactly_once(s)
    w2 = [seq for w, seq, *_ in server["updates"] if w == 2]
    assert w2[:2] == [1, 2]
    assert s["details"][2]["reason"] in ("stopped", "done")
    assert s["lost_workers"] == []


def test_a_lost_reply_is_resent_and_never_applied_twice(task):
    faults = Faults(lose_replies={(1, 2), (2, 5), (3, 1)})
    s = run_async(task, workers=3, faults=faults, ack_timeout=0.3)
    check_exactly_once(s)
    assert s["duplicates"] == 3
    assert sum(w["resends"] for w in s["details"][1:]) == 3
    assert s["updates_applied"] == 3 * 32


def test_server_momentum(task):
    s = run_async(task, epochs=2, lr=0.05, server_momentum=0.5)
    check_exactly_once(s)
    assert s["test_accuracy"] > 0.8


def _lone_server(**kw):
    """A server with no workers (a one-rank group): its update rule, called by hand."""
    from minigrad.distributed.async_ps import ParameterServer
    from minigrad.distributed.comm_threads import ThreadGroup

    return ParameterServer(ThreadGroup(1).comm(0), mlp(), lr=0.1, staleness_aware=False,
                           **kw)


@pytest.mark.parametrize("window", [3, 0])
def test_final_model_is_the_running_average_of_server_versions(window):
    from minigrad.distributed.common import flat_params

    server = _lone_server(average_window=window)
    w0 = server.w.copy()
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=w0.shape).astype(np.float32) for _ in range(40)]
    avg, w = w0.astype(np.float64), w0.astype(np.float64)
    for v, g in enumerate(grads, start=1):
        server._apply(1, v, v - 1, g)
        w = w - 0.1 * g                           # W itself: plain SGD, unchanged
        avg += (w - avg) / min(window, 1 + v / 10) if window else 0
    np.testing.assert_allclose(server.w, w, rtol=1e-5, atol=1e-5)
    report = server.serve()  # no workers: returns at once and loads the final model
    assert report["average_window"] == window
    final = flat_params(server.model.parameters())
    np.testing.assert_allclose(final, avg if window else w, rtol=1e-5, atol=1e-5)
    if window:
        assert not np.allclose(final, server.w)  # the average, not the last version


def test_async_reports_its_averaging_window(task):
    # (test_async_learns_and_records_staleness checks the averaged model learns: > 0.8)
    s = run_async(task)
    assert s["details"][0]["average_window"] == 100
    assert s["test_accuracy"] > 0.5  # one epoch; chance is 0.25
