"""A small distributed job for the tests that start their own `mpiexec` (test_mpi_jobs.py).

    mpiexec -n 2 python tests/distributed/mpi_job.py --strategies sync,dgc --epochs 2 \
        --out OUT_DIR [--save CKPT_PATTERN] [--resume CKPT_PATTERN] [--kill RANK:STEP]

For each strategy it trains the blobs MLP of dist_helpers under MPI and rank 0 writes
OUT_DIR/<strategy>.npz: the final parameters, the test accuracy, and how many TCP
connections this process had open (so a test can tell that the ranks talked over TCP).
CKPT_PATTERN holds "{strategy}". It exits non-zero if the replicas disagree.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dist_helpers import mlp, split

from minigrad.distributed import train_distributed
from minigrad.distributed.common import Faults, flat_params


def tcp_connections():
    """Established TCP connections owned by this process (Linux /proc; -1 elsewhere)."""
    try:
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if not os.path.exists(table):
                continue
            with open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                        count += 1
        return count
    except OSError:
        return -1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--strategies", default="sync,dgc")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--save", default=None)
    p.add_argument("--resume", default=None)
    p.add_argument("--kill", default=None, metavar="RANK:STEP")
    a = p.parse_args()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    train, test = split()
    faults = Faults()
    if a.kill:
        rank, step = (int(x) for x in a.kill.split(":"))
        faults.kill[rank] = step
    for strategy in a.strategies.split(","):
        model = mlp(hidden=64)
        s = train_distributed(strategy, model, train, test, comm="mpi", epochs=a.epochs,
                              batch_size=32, lr=0.05, optimizer="sgd", dgc_warmup_epochs=1.5,
                              save=a.save.format(strategy=strategy) if a.save else None,
                              resume=a.resume.format(strategy=strategy) if a.resume else None,
                              faults=faults, log=print)
        mine = flat_params(model.parameters())
        everyone = comm.allgather(mine)
        if any(not np.array_equal(x, mine) for x in everyone):
            print(f"{strategy}: replicas differ", file=sys.stderr)
            sys.exit(5)
        tcp = comm.gather(tcp_connections(), root=0)
        if comm.rank == 0:
            np.savez(os.path.join(a.out, f"{strategy}.npz"), params=mine,
                     test_accuracy=s["test_accuracy"], tcp=np.array(tcp),
                     resumed_from_epoch=s["resumed_from_epoch"] or 0)


if __name__ == "__main__":
    main()
