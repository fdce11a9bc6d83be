"""Distributed training by hand: communicators and four ways to share the work.

    comm.py           the communicator API (rank, size, barrier, allreduce, allgather, send/recv)
    comm_threads.py   ranks as threads:   launch_threads(n, fn) runs fn(comm) on n threads
    comm_mpi.py       ranks as processes: MPIComm over mpi4py (mpiexec -n N ...)
    common.py         who reads which samples; flat gradient/parameter vectors
    sync.py           synchronous data-parallel SGD (allreduce of gradients)
    hogwild.py        lock-free SGD on shared parameters (threads)
    async_ps.py       asynchronous SGD with a parameter server, staleness, fault handling
    dgc.py            Deep Gradient Compression (momentum correction, top-k, warm-up)
    checkpoint.py     rank 0 writes, every rank restores (per-rank DGC state included)
    launch.py         train_distributed(strategy, model, ...): run any of them, summarise
    cli.py            `minigrad train ... --strategy X --comm threads|mpi`

docs/distributed.md walks through them, with the byte counts and running on several
machines.
"""
from .comm import ANY_SOURCE, ANY_TAG, CommTimeout, Communicator
from .comm_threads import ThreadComm, ThreadGroup, launch_threads
from .launch import STRATEGIES, DistributedRunFailed, train_distributed


def MPIComm(*args, **kwargs):  # a class, imported lazily (mpi4py is optional)
    from .comm_mpi import MPIComm as cls

    return cls(*args, **kwargs)


__all__ = ["ANY_SOURCE", "ANY_TAG", "CommTimeout", "Communicator", "ThreadComm",
           "ThreadGroup", "launch_threads", "MPIComm", "STRATEGIES", "DistributedRunFailed",
           "train_distributed"]
