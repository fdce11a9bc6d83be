"""What a communicator is: the handful of operations distributed SGD needs.

    comm.rank, comm.size              who am I, how many of us
    comm.barrier()                    everyone waits until everyone is here
    comm.allreduce(a, op="sum")       every rank gets  a_0 + a_1 + ... + a_{size-1}
    comm.bcast(a, root=0)             every rank gets root's a
    comm.allgather(a)                 every rank gets [a_0, a_1, ...]; 1-D, sizes may differ
    comm.send(a, dest, tag)           point to point: one array to one rank
    comm.recv(source, tag, dtype)     ... and its receipt (blocking; `timeout=` seconds)
    comm.recv_any(tag, dtype)         (source, tag, array) from whoever sent first, or None
                                      when nothing came within `timeout`

Two implementations behave the same:

* `comm_threads.ThreadComm` - ranks are threads of one process (`launch_threads(n, fn)`),
  collectives meet at a `threading.Barrier`, messages go through per-rank mailboxes.
  Reductions add the ranks' arrays in rank order, so results are reproducible run to run.
* `comm_mpi.MPIComm` - ranks are processes started by `mpiexec`; mpi4py's buffer methods
  (`Send`/`Recv`/`Allreduce`/`Allgatherv`) move the numpy arrays without pickling.

Byte counting: two counters, because what a rank *contributes* and what it *moves* differ.

    bytes_sent    what this rank hands to the communicator: the array of an allreduce,
                  allgather or send (a bcast counts on the root only). Dividing a dense
                  gradient's bytes by it gives a *compression* ratio.
    bytes_moved   what this rank receives over the network under the textbook algorithms,
                  which is also what it sends there (in a ring every rank passes on as much
                  as it takes in):
                    allreduce (ring: reduce-scatter + allgather)   2 (N-1)/N x the array
                    allgather (ring)              the sum of the other N-1 ranks' arrays
                    bcast                         the array, on every rank but the root
                    recv                          the message
                  Dividing a dense allreduce's bytes_moved by it gives a *traffic* ratio.

The two are not proportional: an allreduce's cost per rank stays below 2 x the array
whatever N is, while an allgather's grows with N - 1. A sparse exchange through allgather
(DGC) therefore saves less traffic at larger N than its compression ratio suggests; see
`dgc.py` and docs/distributed.md.

Setup and bookkeeping traffic (broadcasting the initial parameters, gathering state for a
checkpoint, summing statistics) runs inside `with comm.uncounted():` and counts nowhere.

`ANY_SOURCE` / `ANY_TAG` are -1, as in MPI.
"""
import contextlib

import numpy as np

ANY_SOURCE = -1
ANY_TAG = -1


class CommTimeout(TimeoutError):
    """A blocking receive saw no matching message within its timeout."""


class Communicator:
    """The interface; subclasses implement the `_`-prefixed transport methods."""

    rank = 0
    size = 1

    def __init__(self):
        self.bytes_sent = 0
        self.bytes_moved = 0
        self.messages_sent = 0
        self._counting = True

    # -- counting ------------------------------------------------------------------------
    def _count(self, array):
        if self._counting:
            self.bytes_sent += int(array.nbytes)
            self.messages_sent += 1

    def _count_moved(self, nbytes):
        if self._counting:
            self.bytes_moved += nbytes  # a float: 2(N-1)/N of an array need not be whole

    def _count_allreduce(self, array):
        self._count(array)
        self._count_moved(2 * (self.size - 1) * array.nbytes / self.size)

    @contextlib.contextmanager
    def uncounted(self):
        """Traffic inside this block counts in neither counter (setup, checkpoints)."""
        before, self._counting = self._counting, False
        try:
            yield self
        finally:
            self._counting = before

    # -- the API -------------------------------------------------------------------------
    def barrier(self):
        raise NotImplementedError

    def allreduce(self, array, op="sum"):
        raise NotImplementedError

    def bcast(self, array, root=0):
        raise NotImplementedError

    def bcast_object(self, obj, root=0):
        """Root's Python object (pickled under MPI) on every rank: for one-off setup such
        as a restored checkpoint, never for per-step traffic. Uncounted."""
        raise NotImplementedError

    def allgather(self, array):
        raise NotImplementedError

    def send(self, array, dest, tag=0):
        raise NotImplementedError

    def recv(self, source=ANY_SOURCE, tag=ANY_TAG, dtype=np.float32, timeout=None):
        """The next array from `source` with `tag`; raises CommTimeout after `timeout` s."""
        got = self.recv_any(source=source, tag=tag, dtype=dtype, timeout=timeout)
        if got is None:
            raise CommTimeout(f"rank {self.rank}: nothing from source {source} tag {tag} "
                              f"within {timeout} s")
        return got[2]

    def recv_any(self, source=ANY_SOURCE, tag=ANY_TAG, dtype=np.float32, timeout=None):
        """(source, tag, array) of the first matching message, or None after `timeout` s."""
        raise NotImplementedError

    def close(self):
        pass


def check_op(op):
    if op not in ("sum", "max", "min"):
        raise ValueError(f"allreduce: unknown op {op!r}; expected 'sum', 'max' or 'min'")
    return op


# ---------------------------------------------------------------------------- messages
# Point-to-point messages of the parameter server are one float32 array each: a few int32
# header fields (worker, sequence number, version, ...) whose *bits* are stored in float32
# slots, followed by the payload. Reinterpreting bits (a view, not a conversion) is exact
# for every int32, so the header survives the trip unchanged.


def pack(header, payload=None):
    """float32 message = int32 header bits + float32 payload."""
    head = np.asarray(header, dtype=np.int32).view(np.float32)
    if payload is None:
        return head.copy()
    return np.concatenate([head, np.asarray(payload, dtype=np.float32).ravel()])


def unpack(message, n_header):
    """(int32 header array, float32 payload view) of a `pack`ed message."""
    message = np.ascontiguousarray(message, dtype=np.float32)
    return message[:n_header].view(np.int32), message[n_header:]
