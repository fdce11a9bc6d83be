"""A mini-batch loader whose batches are assembled by a thread pool.

    dataset ──► epoch permutation ──► index chunks ──► pool.submit(assemble) ──► in-order batches
                rng([seed, epoch])     [i*B:(i+1)*B]    ≤ prefetch in flight      (consumer)

Why threads and not processes: assembling a batch is NumPy fancy indexing plus an optional
``transform`` (normalisation, augmentation, a copy to the GPU), which spend their time in C
code or ``nogil`` Numba kernels that release the GIL; threads share the dataset without
pickling it, and start in microseconds.

When threads pay off: only when a batch costs more than handing it to a thread. Indexing
and normalising an MNIST batch of 64 does not (docs/figures/loader.png: the calling thread
alone loads 61k batches/s, 1-8 threads 17-26k); augmenting it (shift, rotation, elastic
distortion: milliseconds per batch, ``minigrad.data.transforms``) does. So the default
``num_workers`` comes from the thread budget (``minigrad.threads.plan``): 0 for a
deterministic transform, loader threads for a random one.

Design choices, in the order a reader meets them:

* **Order.** Epoch ``e`` visits the samples in ``np.random.default_rng([seed, e]).permutation(n)``:
  the order depends on ``(seed, e)`` only, never on how many batches were drawn before, so a
  run resumed with ``set_epoch(e)`` sees exactly the batches it would have seen.
* **Random transforms.** A transform with ``random = True`` (augmentation) is called as
  ``transform(batch, rng)`` with ``rng = batch_rng(seed, e, i)``, a generator that depends
  on the seed, the epoch and the batch's position only: whichever thread assembles batch
  ``i``, and however many there are, it is augmented the same way.
* **Threads per worker.** Each worker thread starts by limiting its own Numba kernels to
  ``worker_numba_threads`` threads (default 1; Numba's count is per thread): a loader thread
  is a helper beside the training thread, which owns the cores (``minigrad.threads``).
* **Pool lifetime.** One ``ThreadPoolExecutor`` per *loader*, created on the first epoch and
  reused by every later one. Creating a pool per epoch would start ``num_workers`` threads
  every epoch; for a small dataset (iris: 2 batches per epoch) that start-up would cost more
  than the batches themselves. The pool is shut down by ``close()``, by leaving a ``with``
  block, or, as a safety net, by a ``weakref.finalize`` when the loader is garbage collected.
* **Prefetch.** At most ``prefetch`` batches (default ``2 * num_workers``) are submitted and
  not yet consumed. When the consumer takes batch ``i`` the loader submits batch
  ``i + prefetch`` before handing ``i`` over, so workers stay busy while the model trains.
* **Abandoned epochs.** Each epoch is a generator whose ``finally`` cancels the batches not
  yet started and waits for the ones running; so breaking out of the loop, an exception, or
  dropping the iterator leaves no worker busy with a batch nobody will read.
* **Errors.** An exception raised while assembling batch ``i`` (in a worker, or in the
  calling thread when ``num_workers=0``) is re-raised from the iterator as
  :class:`DataLoaderError`, naming the batch and epoch, with the original exception chained
  as ``__cause__`` (so its traceback, inside the worker, is printed too).
* **Wait time.** ``loader.wait_seconds`` accumulates, for the current (or last) epoch, the
  seconds the consumer spent blocked waiting for the next batch; with ``num_workers=0`` that
  is the time spent assembling batches in the calling thread. ``wait_seconds / epoch_time``
  is the loader's share of an epoch.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import time
import weakref
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .transforms import batch_rng, is_random

__all__ = ["DataLoader", "DataLoaderError"]

Batch = tuple  # a tuple of arrays, one per dataset field: (x, y, ...)


class DataLoaderError(RuntimeError):
    """Assembling a batch failed; the original exception is chained as ``__cause__``."""


class _ArrayDataset:
    """A tuple of equal-length arrays seen through the dataset protocol."""

    def __init__(self, arrays: Sequence[Any]):
        arrays = tuple(arrays)
        if not arrays:
            raise ValueError("DataLoader: dataset tuple is empty; expected (X, y, ...)")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"DataLoader: dataset arrays have different lengths {lengths}")
        self.arrays = arrays
        self.n = lengths[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: np.ndarray) -> Batch:
        return tuple(a[index] for a in self.arrays)


def _assemble(dataset, index: np.ndarray, transform: Callable | None,
              key: tuple[int, int, int] | None) -> Batch:
    """One batch: gather the rows ``index`` of every field, then ``transform`` (worker side).
    ``key`` is (seed, epoch, batch number) for a random transform, else None.

    A module-level function, not a method, so that a queued or running job holds the dataset
    but not the loader; the loader can then be garbage collected while jobs are pending.
    """
    batch = dataset[index]
    if isinstance(batch, np.ndarray):  # a one-field dataset may return a bare array
        batch = (batch,)
    elif not isinstance(batch, tuple):
        batch = tuple(batch)
    if transform is not None:
        batch = transform(batch) if key is None else transform(batch, batch_rng(*key))
    return batch


def _start_worker(numba_threads: int) -> None:
    """Runs first in each worker thread: its Numba kernels get `numba_threads` threads."""
    from .. import threads

    threads.set_numba_threads(numba_threads)


def _shutdown(pool: cf.ThreadPoolExecutor, wait: bool) -> None:
    pool.shutdown(wait=wait, cancel_futures=True)


class DataLoader:
    """Iterate over ``dataset`` in mini-batches of numpy arrays.

    Args:
        dataset: a tuple (or list) of equal-length arrays ``(X, y, ...)``, or any object with
            ``__len__()`` and ``__getitem__(index_array) -> tuple of arrays`` returning the
            rows ``index_array`` (an int64 numpy array) of every field. ``__getitem__`` is
            called from worker threads, concurrently, so it must be thread-safe for reads.
        batch_size: samples per batch; the last batch of an epoch is smaller unless
            ``drop_last``.
        shuffle: visit samples in the order ``default_rng([seed, epoch]).permutation(n)``;
            if False, in index order every epoch.
        seed: the shuffle seed.
        num_workers: threads assembling batches. ``0`` assembles them in the calling thread,
            with no pool at all. ``None``: the thread budget's choice,
            ``minigrad.threads.plan(augment=<transform is random>).loader_workers`` (0 for
            a deterministic transform, unless $MINIGRAD_LOADER_WORKERS says otherwise).
        prefetch: most batches submitted but not yet consumed; default ``2 * num_workers``.
            Ignored when ``num_workers == 0``.
        drop_last: drop the last, partial batch of each epoch.
        transform: ``transform(batch_tuple) -> batch_tuple``, run on each batch in the worker
            (normalisation, a copy to a device); a random one (``transform.random`` true,
            e.g. ``transforms.mnist_augment()``) is called as ``transform(batch, rng)``, with
            the batch's own generator ``transforms.batch_rng(seed, epoch, i)``.
        worker_numba_threads: Numba threads for the kernels each worker thread runs
            (default 1: the training thread owns the cores).

    Each ``iter(loader)`` (each ``for`` loop) is one epoch: it uses the loader's current
    epoch number and then advances it; ``set_epoch(e)`` chooses the next one. Batches come
    out in order, whatever the number of workers, so ``num_workers`` changes speed only,
    never results. Use it as a context manager, or call ``close()``, to stop the worker
    threads when done; garbage collection stops them too.
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int | None = None,
        prefetch: int | None = None,
        drop_last: bool = False,
        transform: Callable[..., Batch] | None = None,
        worker_numba_threads: int = 1,
    ):
        if isinstance(dataset, (tuple, list)):
            dataset = _ArrayDataset(dataset)
        elif not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(
                "DataLoader: dataset must be a tuple of arrays (X, y, ...) or an object with "
                f"__len__ and __getitem__(index_array) -> tuple of arrays; got {type(dataset)}"
            )
        if num_workers is None:
            from .. import threads

            num_workers = threads.plan(augment=is_random(transform)).loader_workers
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"DataLoader: num_workers must be >= 0, got {num_workers}")
        if prefetch is None:
            prefetch = 2 * num_workers
        if num_workers > 0 and int(prefetch) < 1:
            raise ValueError(f"DataLoader: prefetch must be >= 1, got {prefetch}")
        if int(worker_numba_threads) < 1:
            raise ValueError("DataLoader: worker_numba_threads must be >= 1, got "
                             f"{worker_numba_threads}")

        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.prefetch = int(prefetch)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.worker_numba_threads = int(worker_numba_threads)

        self.epoch = 0  # the epoch the next iter() will run
        self.wait_seconds = 0.0  # consumer blocked on the loader, current/last epoch
        self._pool: cf.ThreadPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None

    # ---- order ---------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run epoch ``epoch`` (to resume with the same data order)."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices epoch ``epoch`` visits, in order (a function of seed and epoch)."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _batch_indices(self, epoch: int) -> list[np.ndarray]:
        order = self.order(epoch)
        b = self.batch_size
        return [order[i * b : (i + 1) * b] for i in range(len(self))]

    # ---- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        # Bookkeeping happens now, not at the first next(): iter() claims an epoch.
        epoch = self.epoch
        self.epoch += 1
        self.wait_seconds = 0.0
        chunks = self._batch_indices(epoch)
        if self.num_workers == 0:
            return self._serial(epoch, chunks)
        return self._threaded(epoch, chunks, self._get_pool())

    def _key(self, epoch: int, i: int) -> tuple[int, int, int] | None:
        """What a random transform's generator for batch i is made from; None otherwise."""
        return (self.seed, epoch, i) if is_random(self.transform) else None

    def _serial(self, epoch: int, chunks: list[np.ndarray]) -> Iterator[Batch]:
        dataset, transform = self.dataset, self.transform
        for i, index in enumerate(chunks):
            t0 = time.perf_counter()
            try:
                batch = _assemble(dataset, index, transform, self._key(epoch, i))
            except Exception as e:
                raise self._error(i, epoch, e) from e
            self.wait_seconds += time.perf_counter() - t0
            yield batch

    def _threaded(
        self, epoch: int, chunks: list[np.ndarray], pool: cf.ThreadPoolExecutor
    ) -> Iterator[Batch]:
        dataset, transform = self.dataset, self.transform
        in_flight: deque[cf.Future] = deque()
        submitted = 0

        def closed() -> DataLoaderError:
            return DataLoaderError(f"DataLoader was closed while epoch {epoch} was being iterated")

        def submit() -> None:
            nonlocal submitted
            try:
                future = pool.submit(_assemble, dataset, chunks[submitted], transform,
                                     self._key(epoch, submitted))
            except RuntimeError:  # "cannot schedule new futures after shutdown"
                raise closed() from None
            in_flight.append(future)
            submitted += 1

        try:
            while submitted < len(chunks) and len(in_flight) < self.prefetch:
                submit()
            for i in range(len(chunks)):
                future = in_flight.popleft()
                t0 = time.perf_counter()
                try:
                    batch = future.result()
                except cf.CancelledError:
                    raise closed() from None
                except Exception as e:
                    raise self._error(i, epoch, e) from e
                self.wait_seconds += time.perf_counter() - t0
                if submitted < len(chunks):
                    submit()  # keep `prefetch` batches in flight while the consumer works
                yield batch
        finally:
            # Runs on normal end, on break (generator close), on an exception and on garbage
            # collection of the iterator: drop queued batches, wait for the running ones.
            # (Only for those: a future cancelled while queued may never be "notified" if
            # close() drained the queue, and cf.wait() on it would block forever.)
            running = [f for f in in_flight if not f.cancel()]
            cf.wait(running)

    @staticmethod
    def _error(i: int, epoch: int, e: BaseException) -> DataLoaderError:
        return DataLoaderError(
            f"DataLoader: assembling batch {i} of epoch {epoch} failed: {type(e).__name__}: {e}"
        )

    # ---- worker pool ---------------------------------------------------------------------
    def _get_pool(self) -> cf.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(
                max_workers=self.num_workers,
                thread_name_prefix="minigrad-loader",
                initializer=_start_worker,
                initargs=(self.worker_numba_threads,),
            )
            # Safety net for a loader nobody closed. It must not hold `self`, and it may run
            # in any thread (even a worker), so it must not join: wait=False.
            self._finalizer = weakref.finalize(self, _shutdown, self._pool, False)
        return self._pool

    def close(self) -> None:
        """Stop the worker threads (waits for them). Iterating again starts a new pool."""
        if self._pool is not None:
            self._finalizer.detach()
            _shutdown(self._pool, wait=True)
            self._pool = self._finalizer = None

    def __enter__(self) -> "DataLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DataLoader(n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, num_workers={self.num_workers}, "
            f"prefetch={self.prefetch}, drop_last={self.drop_last}, epoch={self.epoch})"
        )
