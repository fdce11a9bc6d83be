"""Ranks as threads of one process: `launch_threads(n, fn)` runs `fn(comm)` on n threads.

    group = ThreadGroup(n)          shared: one Barrier, one slot per rank, one mailbox per rank
    comm  = group.comm(rank)        what each thread talks through

Collectives (allreduce, bcast, allgather) are "everyone writes a *copy* of its array into
its slot, barrier, everyone reads the slots, barrier": the second barrier keeps a fast rank
from overwriting its slot with the next collective's data while a slow rank is still
reading. The copy matters just as much: without it a slot would be the caller's own buffer,
and a rank that returned from the collective and refilled that buffer for its next step
would change what a slower rank is still adding up (as between processes, what a
collective returns must be a value, never a window onto another rank's memory). Every
returned array is likewise this rank's own. A reduction adds the slots in rank order
0, 1, ..., n-1 on every rank, so all ranks get bit-identical results and a run is
reproducible (float addition is not associative; a fixed order is what makes it
deterministic).

Point-to-point: `send` copies the array into the destination's mailbox (a list guarded by
a Condition); `recv_any` takes the first message that matches (source, tag), waiting up to
`timeout` seconds. Copies on send make a message a value, as it would be between processes.

Failure. If a rank raises, `launch_threads` aborts the barrier (the others get
`threading.BrokenBarrierError` instead of waiting forever) unless `abort_on_error=False`,
which the parameter server uses: there a dead worker must not stop anyone.
"""
import threading
import time

import numpy as np

from .comm import ANY_SOURCE, ANY_TAG, Communicator, check_op

_REDUCE = {"sum": np.add, "max": np.maximum, "min": np.minimum}


class _Mailbox:
    def __init__(self):
        self.messages = []  # (source, tag, array), in arrival order
        self.cond = threading.Condition()


class ThreadGroup:
    """State shared by the n ranks of one thread group."""

    def __init__(self, size):
        if size < 1:
            raise ValueError(f"ThreadGroup: size must be >= 1, got {size}")
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots = [None] * size
        self.mailboxes = [_Mailbox() for _ in range(size)]
        self.aborted = False

    def comm(self, rank):
        return ThreadComm(self, rank)

    def abort(self):
        """A rank failed: wake every rank waiting in a collective (the barrier) or for a
        message (recv), so that each raises instead of waiting forever."""
        self.aborted = True
        self.barrier.abort()
        for box in self.mailboxes:
            with box.cond:
                box.cond.notify_all()


class ThreadComm(Communicator):
    def __init__(self, group, rank):
        super().__init__()
        self.group, self.rank, self.size = group, rank, group.size

    def __repr__(self):
        return f"ThreadComm(rank={self.rank}, size={self.size})"

    # -- collectives ---------------------------------------------------------------------
    def barrier(self):
        self.group.barrier.wait()

    def _exchange(self, value, combine):
        """Publish `value` (the caller passes a private copy) in my slot; return
        `combine(list of every rank's value, rank order)`, computed while every slot is
        still in place: between the two barriers, where no rank can write a slot."""
        g = self.group
        g.slots[self.rank] = value
        g.barrier.wait()  # all slots written
        try:
            return combine(list(g.slots))
        finally:
            g.barrier.wait()  # all slots read: they may be reused

    def allreduce(self, array, op="sum"):
        reduce = _REDUCE[check_op(op)]
        array = np.array(array, copy=True)
        self._count_allreduce(array)

        def add_in_rank_order(parts):
            out = parts[0].copy()
            for part in parts[1:]:  # rank order: the same bits on every rank
                reduce(out, part, out=out)
            return out

        return self._exchange(array, add_in_rank_order)

    def bcast(self, array, root=0):
        array = np.array(array, copy=True) if self.rank == root else None
        if array is not None:
            self._count(array)
        out = self._exchange(array, lambda parts: parts[root].copy())
        if self.rank != root:
            self._count_moved(out.nbytes)
        return out

    def bcast_object(self, obj, root=0):
        import copy

        return self._exchange(obj if self.rank == root else None,
                              lambda parts: copy.deepcopy(parts[root]))

    def allgather(self, array):
        array = np.array(array, copy=True).ravel()
        self._count(array)
        out = self._exchange(array, lambda parts: [a.copy() for a in parts])
        self._count_moved(sum(a.nbytes for r, a in enumerate(out) if r != self.rank))
        return out

    # -- point to point ------------------------------------------------------------------
    def send(self, array, dest, tag=0):
        array = np.array(array, copy=True)  # a message is a value, not a shared buffer
        self._count(array)
        box = self.group.mailboxes[dest]
        with box.cond:
            box.messages.append((self.rank, tag, array))
            box.cond.notify_all()

    def recv_any(self, source=ANY_SOURCE, tag=ANY_TAG, dtype=np.float32, timeout=None):
        box = self.group.mailboxes[self.rank]
        deadline = None if timeout is None else time.monotonic() + timeout
        with box.cond:
            while True:
                for i, (src, t, arr) in enumerate(box.messages):
                    if source in (ANY_SOURCE, src) and tag in (ANY_TAG, t):
                        del box.messages[i]
                        self._count_moved(arr.nbytes)
                        return src, t, arr
                if self.group.aborted:  # a peer failed: its message will never come
                    raise threading.BrokenBarrierError(
                        f"rank {self.rank}: recv abandoned, another rank of the group failed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                box.cond.wait(left)


def launch_threads(n, fn, *, abort_on_error=True, name="rank"):
    """Run `fn(comm)` on n threads, one per rank; return their results in rank order.

    With `abort_on_error` (collective algorithms such as sync SGD), the first exception
    breaks the barrier for everyone and is re-raised here, naming its rank. Without it
    (the parameter server), a failed rank's entry in the result list is its exception.
    """
    group = ThreadGroup(n)
    results = [None] * n
    errors = [None] * n

    def body(rank):
        try:
            results[rank] = fn(group.comm(rank))
        except BaseException as e:  # noqa: B036 - recorded and re-raised in the caller
            errors[rank] = e
            if abort_on_error:
                group.abort()

    threads = [threading.Thread(target=body, args=(r,), name=f"{name}-{r}", daemon=True)
               for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if abort_on_error:
        # Prefer the root cause over the BrokenBarrierErrors it caused in the others.
        real = [(r, e) for r, e in enumerate(errors)
                if e is not None and not isinstance(e, threading.BrokenBarrierError)]
        real = real or [(r, e) for r, e in enumerate(errors) if e is not None]
        if real:
            rank, err = real[0]
            raise RuntimeError(f"rank {rank} of {n} failed: {type(err).__name__}: {err}") \
                from err
        return results
    return [e if e is not None else r for r, e in zip(results, errors, strict=True)]
