"""Ranks as processes under `mpiexec`: the communicator API on mpi4py's buffer methods.

    mpiexec -n 4 minigrad train mnist --strategy sync --comm mpi

mpi4py has two families of methods: lower-case (`send`, `allreduce`) pickle any Python
object; Capitalised (`Send`, `Allreduce`, `Allgatherv`) move a buffer - a numpy array -
as raw memory, with no pickling and no extra copy. Everything here uses the buffer family.

* allreduce -> `Allreduce(send, recv, op=MPI.SUM)`.
* allgather of arrays whose sizes differ per rank (DGC's sparse index/value lists) is two
  steps: `Allgather` the sizes, then `Allgatherv` with counts and displacements into one
  receive buffer, cut back into one array per rank.
* send is `Isend` of a copy (the request is completed later), so it never blocks.
* recv of a message whose size the receiver does not know: `Probe`/`Iprobe` first (it
  returns a Status with source, tag and element count), allocate, then `Recv`.
  With a timeout we poll `Iprobe`, because MPI has no blocking receive with a timeout.

mpi4py is imported when an MPIComm is made, so the rest of minigrad never needs it
(`pip install -e .[mpi]`).
"""
import time

import numpy as np

from .comm import ANY_SOURCE, ANY_TAG, Communicator, check_op


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError("--comm mpi needs mpi4py and an MPI library "
                           "(pip install -e .[mpi]; then run under mpiexec)") from e
    return MPI


class MPIComm(Communicator):
    def __init__(self, comm=None):
        super().__init__()
        self.MPI = MPI = _mpi()
        from mpi4py.util.dtlib import from_numpy_dtype

        self._mpi_type = from_numpy_dtype
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        self._pending = []  # (request, buffer) of sends not yet known to be complete

    def __repr__(self):
        return f"MPIComm(rank={self.rank}, size={self.size})"

    # -- collectives ---------------------------------------------------------------------
    def barrier(self):
        self.comm.Barrier()

    def allreduce(self, array, op="sum"):
        array = np.ascontiguousarray(array)
        self._count_allreduce(array)
        out = np.empty_like(array)
        self.comm.Allreduce(array, out, op=self._ops[check_op(op)])
        return out

    def bcast(self, array, root=0):
        # Every rank must know shape and dtype: non-roots pass an array of the right shape.
        buf = np.array(array, copy=True, order="C")
        if self.rank == root:
            self._count(buf)
        else:
            self._count_moved(buf.nbytes)
        self.comm.Bcast(buf, root=root)
        return buf

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj if self.rank == root else None, root=root)

    def allgather(self, array):
        array = np.ascontiguousarray(array).ravel()
        self._count(array)
        counts = np.zeros(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([array.size], dtype=np.int64), counts)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out = np.empty(int(counts.sum()), dtype=array.dtype)
        mpi_type = self._mpi_type(array.dtype)
        self.comm.Allgatherv([array, array.size, mpi_type],
                             [out, counts.tolist(), displs.tolist(), mpi_type])
        self._count_moved((out.size - array.size) * array.itemsize)
        return [out[d:d + c].copy() for d, c in zip(displs, counts, strict=True)]

    # -- point to point ------------------------------------------------------------------
    def send(self, array, dest, tag=0):
        """Non-blocking: `Isend` a private copy and return at once (as the thread mailbox
        does). A blocking `Send` of a large message waits until the receiver posts its
        `Recv`; two ranks sending to each other at the same moment would then deadlock,
        which the parameter server's resends make possible."""
        array = np.array(array, copy=True, order="C")
        self._count(array)
        self._pending.append((self.comm.Isend(array, dest=dest, tag=tag), array))
        self._pending = [(r, a) for r, a in self._pending if not r.Test()]

    def flush(self):
        """Wait until every message this rank sent has been received."""
        self.MPI.Request.Waitall([r for r, _ in self._pending])
        self._pending = []

    def close(self):
        self.flush()

    def recv_any(self, source=ANY_SOURCE, tag=ANY_TAG, dtype=np.float32, timeout=None):
        MPI = self.MPI
        src = MPI.ANY_SOURCE if source == ANY_SOURCE else source
        tg = MPI.ANY_TAG if tag == ANY_TAG else tag
        status = MPI.Status()
        if timeout is None:
            self.comm.Probe(source=src, tag=tg, status=status)
        else:
            deadline = time.monotonic() + timeout
            while not self.comm.Iprobe(source=src, tag=tg, status=status):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.0005)
        dtype = np.dtype(dtype)
        mpi_type = self._mpi_type(dtype)
        buf = np.empty(status.Get_count(mpi_type), dtype=dtype)
        # Receive exactly the probed message (same source and tag; MPI keeps order per pair).
        self.comm.Recv([buf, mpi_type], source=status.Get_source(), tag=status.Get_tag())
        self._count_moved(buf.nbytes)
        return status.Get_source(), status.Get_tag(), buf
