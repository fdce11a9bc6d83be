"""How a distributed run reports a failed rank: the exception, its message (which rank, what
happened, which checkpoint to resume from), and the rank-to-process map printed under MPI.
Shared by launch.py (data-parallel strategies) and model_parallel.py (the split ones)."""
import os
import sys


class DistributedRunFailed(RuntimeError):
    """A rank failed and the run stopped; the message says which, and how to resume."""


def failure_message(strategy, rank, size, err, save, progress, how):
    saved = progress["saved_epoch"]
    if saved is not None:
        resume = (f"the last checkpoint, {save}, holds epoch {saved}: resume with "
                  f"--resume {save} (the epoch in progress is redone, so no update is lost "
                  "or applied twice)")
    elif save:
        resume = f"no checkpoint was written yet ({save} is written after each epoch)"
    else:
        resume = "no checkpoint was being written (--save PATH writes one after each epoch)"
    return (f"{strategy}: rank {rank} of {size} failed ({type(err).__name__}: {err}); "
            f"{how}; {resume}")


def thread_failure(strategy, e, size, save, progress):
    """The exception to raise for a failed thread rank: a checkpoint that cannot be used
    is reported as itself (every rank raised it); anything else as DistributedRunFailed."""
    from ..checkpoint import CheckpointError

    cause = e.__cause__ if e.__cause__ is not None else e
    if isinstance(cause, CheckpointError):
        return cause
    rank = getattr(e, "rank", None)
    if rank is None:  # launch_threads: "rank R of N failed: ..."
        text = str(e)
        rank = int(text.split()[1]) if text.startswith("rank ") else "?"
    how = (f"the run stopped: {strategy} needs every rank at every step, so the failed "
           "rank's shard is not handed to the others")
    return DistributedRunFailed(failure_message(strategy, rank, size, cause, save, progress,
                                                 how))


def announce_ranks(c):
    """Who is who: if a rank's process dies, mpiexec's banner names its PID and host
    ("BAD TERMINATION ... PID 8259 RUNNING AT node2"); rank 0's line on stderr turns that
    into a rank. Collective (MPI)."""
    import socket

    where = c.comm.gather((os.getpid(), socket.gethostname()), root=0)
    if c.rank == 0:
        print(f"[mpi] {c.size} ranks: " + ", ".join(
            f"rank {r} = pid {pid} on {host}" for r, (pid, host) in enumerate(where)),
            file=sys.stderr, flush=True)
