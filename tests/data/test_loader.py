"""DataLoader: batching, order, determinism, workers, errors, thread cleanup, wait time."""

import gc
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrad.data import DataLoader, DataLoaderError


def make_data(n=10, d=3):
    X = np.arange(n * d, dtype=np.float32).reshape(n, d)
    y = np.arange(n, dtype=np.int64)
    return X, y


def batches(loader):
    return [tuple(a.copy() for a in b) for b in loader]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for ba, bb in zip(a, b, strict=True):
        assert len(ba) == len(bb)
        for xa, xb in zip(ba, bb, strict=True):
            np.testing.assert_array_equal(xa, xb)


def new_threads_after(before, timeout=5.0):
    """Threads started since `before` that are still alive after joining them for `timeout`."""
    deadline = time.monotonic() + timeout
    extra = [t for t in threading.enumerate() if t not in before]
    for t in extra:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t for t in extra if t.is_alive()]


# ---- batching -----------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 4])
def test_batch_count_and_sizes_keep_last_partial(num_workers):
    X, y = make_data(10)
    with DataLoader((X, y), batch_size=4, num_workers=num_workers) as loader:
        assert len(loader) == 3
        sizes = [len(xb) for xb, yb in loader]
    assert sizes == [4, 4, 2]


@pytest.mark.parametrize("num_workers", [0, 4])
def test_drop_last(num_workers):
    X, y = make_data(10)
    with DataLoader((X, y), batch_size=4, drop_last=True, num_workers=num_workers) as loader:
        assert len(loader) == 2
        assert [len(yb) for _, yb in loader] == [4, 4]


def test_batches_are_tuples_of_rows_that_belong_together():
    X, y = make_data(50)
    with DataLoader((X, y), batch_size=8, num_workers=2) as loader:
        for xb, yb in loader:
            assert xb.dtype == np.float32 and yb.dtype == np.int64
            np.testing.assert_array_equal(xb, X[yb])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    batch_size=st.integers(1, 70),
    drop_last=st.booleans(),
    num_workers=st.sampled_from([0, 2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_sample_exactly_once_per_epoch(n, batch_size, drop_last, num_workers, seed):
    X, y = make_data(n, 1)
    with DataLoader(
        (X, y), batch_size=batch_size, seed=seed, drop_last=drop_last, num_workers=num_workers
    ) as loader:
        for _ in range(2):
            got = [yb for _, yb in loader]
            assert len(got) == len(loader)
            sizes = [len(b) for b in got]
            if drop_last:
                assert sizes == [batch_size] * (n // batch_size)
            else:
                tail = [n % batch_size] if n % batch_size else []
                assert sizes == [batch_size] * (n // batch_size) + tail
            seen = np.concatenate(got) if got else np.array([], dtype=np.int64)
            if drop_last:
                assert len(seen) == (n // batch_size) * batch_size
                assert len(np.unique(seen)) == len(seen)
            else:
                np.testing.assert_array_equal(np.sort(seen), np.arange(n))


def test_shuffle_false_is_index_order_every_epoch():
    X, y = make_data(10)
    with DataLoader((X, y), batch_size=3, shuffle=False, num_workers=2) as loader:
        for _ in range(2):
            np.testing.assert_array_equal(np.concatenate([yb for _, yb in loader]), y)


# ---- order ----------------------------------------------------------------------------------
def test_order_is_a_function_of_seed_and_epoch():
    X, y = make_data(100)
    a = DataLoader((X, y), batch_size=16, seed=7, num_workers=0)
    b = DataLoader((X, y), batch_size=16, seed=7, num_workers=0)
    a0, a1 = batches(a), batches(a)
    b0, b1 = batches(b), batches(b)
    assert_same_batches(a0, b0)
    assert_same_batches(a1, b1)
    assert not np.array_equal(a0[0][1], a1[0][1]), "epochs 0 and 1 must differ"
    c = DataLoader((X, y), batch_size=16, seed=8, num_workers=0)
    assert not np.array_equal(batches(c)[0][1], a0[0][1]), "seeds 7 and 8 must differ"
    np.testing.assert_array_equal(
        np.concatenate([yb for _, yb in a0]),
        np.random.default_rng([7, 0]).permutation(100),
    )


def test_set_epoch_reproduces_an_epoch():
    X, y = make_data(100)
    with DataLoader((X, y), batch_size=16, seed=3, num_workers=2) as loader:
        epochs = [batches(loader) for _ in range(4)]
        assert loader.epoch == 4
    with DataLoader((X, y), batch_size=16, seed=3, num_workers=2) as resumed:
        resumed.set_epoch(2)
        assert_same_batches(batches(resumed), epochs[2])
        assert_same_batches(batches(resumed), epochs[3])


def test_iter_claims_its_epoch_even_before_the_first_batch():
    X, y = make_data(20)
    loader = DataLoader((X, y), batch_size=4, num_workers=0)
    it0, it1 = iter(loader), iter(loader)
    assert loader.epoch == 2
    assert_same_batches(list(it0), [b for b in DataLoader((X, y), batch_size=4, num_workers=0)])
    assert len(list(it1)) == 5


@pytest.mark.parametrize("num_workers,prefetch", [(1, 1), (4, None), (3, 2), (2, 16)])
def test_workers_give_the_same_batches_as_the_calling_thread(num_workers, prefetch):
    X, y = make_data(203, 5)
    serial = DataLoader((X, y), batch_size=10, seed=11, num_workers=0)
    with DataLoader(
        (X, y), batch_size=10, seed=11, num_workers=num_workers, prefetch=prefetch
    ) as threaded:
        for _ in range(3):
            assert_same_batches(batches(serial), batches(threaded))


def test_dataset_protocol_object():
    class Squares:
        def __len__(self):
            return 30

        def __getitem__(self, index):
            index = np.asarray(index)
            return index.astype(np.float64) ** 2, index

    with DataLoader(Squares(), batch_size=7, num_workers=2) as loader:
        got = list(loader)
    assert [len(b[1]) for b in got] == [7, 7, 7, 7, 2]
    for xb, ib in got:
        np.testing.assert_array_equal(xb, ib.astype(np.float64) ** 2)


def test_bad_arguments():
    X, y = make_data(10)
    with pytest.raises(ValueError, match="different lengths"):
        DataLoader((X, y[:5]))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader((X, y), batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader((X, y), num_workers=-1)
    with pytest.raises(TypeError, match="__getitem__"):
        DataLoader(42)


# ---- transform ------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 3])
def test_transform_runs_on_every_batch_in_a_worker(num_workers):
    X, y = make_data(20)
    threads = set()

    def transform(batch):
        threads.add(threading.current_thread().name)
        xb, yb = batch
        return xb * 2, yb + 100

    with DataLoader((X, y), batch_size=6, num_workers=num_workers, transform=transform) as ld:
        for xb, yb in ld:
            np.testing.assert_array_equal(xb, X[yb - 100] * 2)
    if num_workers:
        assert threads and all(name.startswith("minigrad-loader") for name in threads)
    else:
        assert threads == {threading.current_thread().name}


# ---- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 4])
def test_worker_exception_reaches_the_caller(num_workers):
    X, y = make_data(40)
    before = set(threading.enumerate())

    def transform(batch):
        if 13 in batch[1]:
            raise ValueError("bad sample 13")
        return batch

    loader = DataLoader(
        (X, y), batch_size=4, shuffle=False, num_workers=num_workers, transform=transform
    )
    got = []
    with pytest.raises(DataLoaderError, match=r"batch 3 of epoch 0") as info:
        for _, yb in loader:
            got.append(yb)
    assert isinstance(info.value.__cause__, ValueError)
    assert "bad sample 13" in str(info.value)
    assert len(got) == 3  # batches before the failing one were delivered, in order
    # the loader is still usable for the next epoch (the transform fails again, same batch)
    with pytest.raises(DataLoaderError, match="batch 3 of epoch 1"):
        list(loader)
    loader.close()
    assert new_threads_after(before) == []


# ---- thread cleanup -------------------------------------------------------------------------
def slow_counting_transform(counter, delay=0.005):
    lock = threading.Lock()

    def transform(batch):
        time.sleep(delay)
        with lock:
            counter.append(1)
        return batch

    return transform


def test_break_cancels_pending_batches_and_close_stops_threads():
    X, y = make_data(400)
    before = set(threading.enumerate())
    calls = []
    loader = DataLoader(
        (X, y), batch_size=4, num_workers=2, prefetch=4, transform=slow_counting_transform(calls)
    )
    for i, _ in enumerate(loader):
        if i == 1:
            break
    # The iterator was closed by `break` (refcount): queued batches were cancelled and the
    # running ones waited for, so no worker is still assembling batches nobody will read.
    n = len(calls)
    assert n <= 2 + 4, n  # 2 consumed + at most `prefetch` in flight
    time.sleep(0.05)
    assert len(calls) == n
    loader.close()
    assert new_threads_after(before) == []


def test_context_manager_closes_the_pool():
    X, y = make_data(100)
    before = set(threading.enumerate())
    with DataLoader((X, y), batch_size=4, num_workers=4) as loader:
        for _ in loader:
            pass
        assert any(t.name.startswith("minigrad-loader") for t in threading.enumerate())
    assert new_threads_after(before) == []
    # iterating after close() starts a fresh pool
    assert len(list(loader)) == 25
    loader.close()
    assert new_threads_after(before) == []


def test_close_during_iteration_stops_it_cleanly():
    X, y = make_data(400)
    before = set(threading.enumerate())
    loader = DataLoader(
        (X, y), batch_size=4, num_workers=2, prefetch=8, transform=slow_counting_transform([])
    )
    it = iter(loader)
    next(it)
    loader.close()
    with pytest.raises(DataLoaderError, match="closed"):
        for _ in it:
            pass
    assert new_threads_after(before) == []


def test_garbage_collection_stops_threads():
    X, y = make_data(400)
    before = set(threading.enumerate())
    loader = DataLoader((X, y), batch_size=4, num_workers=3, transform=slow_counting_transform([]))
    it = iter(loader)
    next(it)
    del it, loader
    gc.collect()
    assert new_threads_after(before) == []


def test_abandoned_loop_over_a_temporary_loader_leaves_no_thread():
    X, y = make_data(400)
    before = set(threading.enumerate())
    for _ in DataLoader((X, y), batch_size=4, num_workers=2):
        break
    gc.collect()
    assert new_threads_after(before) == []


def test_exception_in_consumer_leaves_no_busy_worker():
    X, y = make_data(400)
    before = set(threading.enumerate())
    calls = []
    with pytest.raises(KeyError):
        with DataLoader(
            (X, y),
            batch_size=4,
            num_workers=2,
            prefetch=4,
            transform=slow_counting_transform(calls),
        ) as loader:
            for _ in loader:
                raise KeyError("training step failed")
    n = len(calls)
    time.sleep(0.05)
    assert len(calls) == n <= 1 + 4
    assert new_threads_after(before) == []


# ---- wait time ------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 1])
def test_wait_seconds_measures_time_blocked_on_the_loader(num_workers):
    X, y = make_data(40)
    delay = 0.01

    def slow(batch):
        time.sleep(delay)
        return batch

    with DataLoader(
        (X, y), batch_size=4, num_workers=num_workers, prefetch=1, transform=slow
    ) as loader:
        assert loader.wait_seconds == 0.0
        t0 = time.perf_counter()
        for _ in loader:
            pass
        epoch_time = time.perf_counter() - t0
        # 10 batches of >= 10 ms each, produced while the consumer does nothing: it waits
        # for nearly all of them.
        assert 10 * delay * 0.5 <= loader.wait_seconds <= epoch_time
        it = iter(loader)
        assert loader.wait_seconds == 0.0  # reset for the new epoch
        next(it)
        assert loader.wait_seconds > 0.0
        it.close()


# ---- threads: the default number of workers, and each worker's Numba budget -------------------
class CoinFlip:
    """A random transform: adds a per-batch random number drawn from the loader's rng."""

    random = True

    def __call__(self, batch, rng):
        xb, yb = batch
        return xb + np.float32(rng.random()), yb


def test_default_workers_come_from_the_thread_budget(monkeypatch):
    from minigrad import threads

    monkeypatch.delenv(threads.ENV_LOADER, raising=False)
    X, y = make_data(10)
    assert DataLoader((X, y)).num_workers == 0  # no transform: nothing worth a thread
    expected = threads.plan(augment=True).loader_workers
    assert expected >= 1
    assert DataLoader((X, y), transform=CoinFlip()).num_workers == expected
    monkeypatch.setenv(threads.ENV_LOADER, "3")
    assert DataLoader((X, y)).num_workers == 3


@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_random_transform_gets_the_batch_s_own_generator(num_workers):
    from minigrad.data.transforms import batch_rng

    X, y = make_data(40)
    with DataLoader((X, y), batch_size=8, seed=4, num_workers=num_workers,
                    transform=CoinFlip()) as loader:
        for epoch in range(2):
            for i, (xb, yb) in enumerate(loader):
                offset = np.float32(batch_rng(4, epoch, i).random())
                np.testing.assert_array_equal(xb, X[yb] + offset)


@pytest.mark.parametrize("worker_numba_threads", [1, 2])
def test_worker_threads_run_their_kernels_on_their_own_numba_budget(worker_numba_threads):
    import numba

    seen = []

    def record_threads(batch):
        seen.append(numba.get_num_threads())
        return batch

    expected = min(worker_numba_threads, numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    X, y = make_data(40)
    with DataLoader((X, y), batch_size=4, num_workers=2, transform=record_threads,
                    worker_numba_threads=worker_numba_threads) as loader:
        list(loader)
    assert seen and set(seen) == {expected}
    assert numba.get_num_threads() == before  # the calling thread's budget is untouched
    with pytest.raises(ValueError, match="worker_numba_threads"):
        DataLoader((X, y), worker_numba_threads=0)
