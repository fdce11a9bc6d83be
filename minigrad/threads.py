"""The thread budget: how many threads each part of a run may use, decided in one place.

A training run has four kinds of threads, and left alone each kind takes every core:

    cores of this host ──► split between the MPI ranks on this host (ranks_on_host)
                           │
                           ▼  cores of this process ("cores")
      training workers (W threads: Hogwild, sync/async/DGC ranks on threads, or 1)
        └─ each launches Numba-parallel kernels on its own team of numba_threads
           (with the omp and tbb layers every calling thread gets its own team)
      BLAS (OpenBLAS/MKL) — one pool per process, used by NumPy's matmul
      data-loader threads (assemble and augment batches beside the training threads)

Issue #18 measured what happens without a budget: 4 Hogwild threads on 2 cores each ran
their kernels on a 2-thread Numba team (8 busy threads on 2 cores) and trained no faster
than one thread; two MPI ranks on 2 cores ran at 291 images/s with 2 Numba threads each
and at 836-1,018 with one. The rule this module applies:

1. cores = the CPUs this process may run on (``os.sched_getaffinity``; a container or
   ``taskset`` limits it) or ``MINIGRAD_THREADS`` / ``--threads`` — divided by the number
   of MPI ranks on this host (``local_ranks()``), so ranks do not fight either.
2. workers x numba_threads_per_worker <= cores:  numba_threads = max(1, cores // workers).
   Numba's ``set_num_threads`` is *thread-local*, which is exactly what a per-worker budget
   needs: each worker thread calls ``apply_in_worker(plan)`` once, at its start.
3. BLAS: the limit (threadpoolctl's ``threadpool_limits``) is process-wide, one pool shared
   by every thread that calls it. With one worker it gets the worker's cores (BLAS and
   Numba kernels run one after the other in that thread, never at once); with several
   workers it gets 1 thread, so each worker's matmul runs in the worker's own thread
   instead of queueing for the one pool (measured in launch.py: 4 sync workers, 76 s with
   OpenBLAS's pool against 2 s with one thread each). BLAS is never called from inside a
   Numba-parallel region; if a kernel ever does, it must run with 1 BLAS thread.
4. Data-loader threads run 1 Numba thread each and are not taken out of the workers'
   budget: they sleep most of the time (at most ``prefetch`` batches ahead), and a batch is
   a small fraction of a training step. Default: 0 threads when the batch transform is
   deterministic (normalising a batch costs less than handing it to a thread: the main
   thread loads 61k batches/s, 1-8 threads 17-26k), and max(1, cores // 8) when it is
   random (augmentation, which does pay for a thread).

Every number can be overridden, and the plan records where each one came from:

    argument (e.g. --threads) > environment variable > the rule above
    MINIGRAD_THREADS=N          the cores of this host to share (instead of the affinity mask)
    MINIGRAD_NUMBA_THREADS=N    Numba threads per worker
    MINIGRAD_BLAS_THREADS=N     BLAS threads (per process)
    MINIGRAD_LOADER_WORKERS=N   data-loader threads

Numba's own ``NUMBA_NUM_THREADS`` (the size of its pool, fixed at start-up) caps the Numba
threads: ``set_num_threads`` cannot go above it.

Usage::

    from minigrad import threads
    plan = threads.plan(workers=4)             # ThreadPlan: cores, numba threads, BLAS, ...
    with threads.limits(plan):                 # BLAS limit for the process, Numba for me
        run 4 worker threads, each starting with threads.apply_in_worker(plan)
    plan.as_dict()                             # for `minigrad info` and --json summaries
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Iterator, Mapping

__all__ = ["ThreadPlan", "plan", "apply_in_worker", "limits", "local_ranks", "host_cores",
           "set_numba_threads",
           "ENV_THREADS", "ENV_NUMBA", "ENV_BLAS", "ENV_LOADER"]

ENV_THREADS = "MINIGRAD_THREADS"
ENV_NUMBA = "MINIGRAD_NUMBA_THREADS"
ENV_BLAS = "MINIGRAD_BLAS_THREADS"
ENV_LOADER = "MINIGRAD_LOADER_WORKERS"

CORES_PER_LOADER_THREAD = 8  # rule 4: one augmenting loader thread per 8 cores, at least 1


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads each part of this process may use (see the module docstring).

    ``sources`` says, for each number, where it came from: "argument", "env NAME", or the
    rule ("affinity", "cores // workers", ...); ``notes`` lists anything a user should know
    (more workers than cores, a cap by NUMBA_NUM_THREADS).
    """

    host_cores: int  # CPUs of this host we may use (affinity mask or MINIGRAD_THREADS)
    ranks_on_host: int  # MPI ranks sharing them (1 without MPI)
    cores: int  # this process's share: host_cores // ranks_on_host, at least 1
    workers: int  # training threads in this process
    numba_threads_per_worker: int
    blas_threads_per_worker: int  # a process-wide limit: BLAS has one pool per process
    loader_workers: int
    numba_threads_per_loader: int = 1
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """A JSON-ready dict (for `minigrad info` and every --json summary)."""
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d

    def describe(self) -> str:
        """One line for logs and `minigrad info`."""
        return (f"{self.cores} cores for this process ({self.host_cores} on the host / "
                f"{self.ranks_on_host} rank{'s' if self.ranks_on_host != 1 else ''}): "
                f"{self.workers} worker{'s' if self.workers != 1 else ''} x "
                f"{self.numba_threads_per_worker} Numba thread"
                f"{'s' if self.numba_threads_per_worker != 1 else ''}, BLAS "
                f"{self.blas_threads_per_worker}, loader threads {self.loader_workers}")


# ---- counting cores and ranks ----------------------------------------------------------------
def host_cores() -> int:
    """CPUs this process may run on: the affinity mask where the OS has one, else cpu_count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# Set by the launchers themselves (no communication needed to read them).
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS",  # MPICH's hydra
                    "OMPI_COMM_WORLD_LOCAL_SIZE")  # Open MPI
_MPI_JOB_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD_", "HYDRA_", "MPI_LOCALNRANKS")


def _in_mpi_job(env: Mapping[str, str]) -> bool:
    return any(k.startswith(_MPI_JOB_PREFIXES) for k in env)


@functools.lru_cache(maxsize=1)
def local_ranks() -> int:
    """How many MPI ranks run on this host (this one included); 1 without MPI.

    A plain `python` run never imports mpi4py here (importing it initialises MPI, which is
    slow and may print): we look only when the process was started by mpiexec (its
    environment says so) or mpi4py.MPI is already imported. Then: the launcher's own count
    of local ranks if it exports one, else the size of COMM_WORLD split by shared memory
    (``Split_type(COMM_TYPE_SHARED)``: the ranks that share this host's memory). The split
    is a collective operation: the first call must happen on every rank (plan() does, at
    start-up); the answer is cached.
    """
    env = os.environ
    if "mpi4py.MPI" not in sys.modules and not _in_mpi_job(env):
        return 1
    for var in _LOCAL_SIZE_VARS:
        if env.get(var, "").isdigit() and int(env[var]) >= 1:
            return int(env[var])
    return _split_type_size()


def _split_type_size() -> int:
    """Size of COMM_WORLD's shared-memory (same host) sub-communicator; 1 without mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError:
        return 1
    if not MPI.Is_initialized() or MPI.Is_finalized():
        return 1
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


# ---- the plan ---------------------------------------------------------------------------------
def _positive(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive whole number, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{what} must be >= 1, got {n}")
    return n


def _choose(name: str, argument, env: Mapping[str, str], env_var: str, rule: int,
            rule_source: str, sources: dict, minimum: int = 1) -> int:
    """argument > environment variable > rule; records the source in `sources[name]`."""
    if argument is not None:
        n, sources[name] = int(argument), "argument"
    elif env.get(env_var, "").strip():
        n, sources[name] = _env_int(env, env_var, minimum), f"env {env_var}"
    else:
        n, sources[name] = rule, rule_source
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def _env_int(env: Mapping[str, str], var: str, minimum: int) -> int:
    raw = env[var].strip()
    if not raw.lstrip("-").isdigit() or int(raw) < minimum:
        raise ValueError(f"${var} must be a whole number >= {minimum}, got {raw!r}")
    return int(raw)


def _numba_pool_size() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def plan(workers: int = 1, loader_workers: int | None = None,
         ranks_on_host: int | None = None, *, cores: int | None = None,
         numba_threads: int | None = None, blas_threads: int | None = None,
         augment: bool = False, env: Mapping[str, str] | None = None,
         numba_pool: int | None = None) -> ThreadPlan:
    """The thread budget for a process running `workers` training threads.

    Args:
        workers: training threads in this process (1 for plain training).
        loader_workers: data-loader threads; None: the rule (0, or with `augment` one per
            8 cores, at least 1), unless $MINIGRAD_LOADER_WORKERS says.
        ranks_on_host: MPI ranks sharing this host; None: `local_ranks()`.
        cores: the host's cores to share (the --threads flag); None: $MINIGRAD_THREADS, else
            the affinity mask.
        numba_threads, blas_threads: per-worker overrides (else $MINIGRAD_NUMBA_THREADS,
            $MINIGRAD_BLAS_THREADS, else the rule).
        augment: the batch transform is random (augmentation): worth a loader thread.
        env: the environment to read (default os.environ; tests pass a dict).
        numba_pool: Numba's pool size NUMBA_NUM_THREADS (read from numba when None), which
            caps the Numba threads.
    """
    env = os.environ if env is None else env
    workers = _positive(workers, "workers")
    sources: dict[str, str] = {}
    notes: list[str] = []

    host = _choose("host_cores", cores, env, ENV_THREADS, host_cores(),
                   "affinity" if hasattr(os, "sched_getaffinity") else "cpu_count", sources)
    if ranks_on_host is None:
        ranks, sources["ranks_on_host"] = local_ranks(), "local_ranks()"
    else:
        ranks, sources["ranks_on_host"] = _positive(ranks_on_host, "ranks_on_host"), "argument"
    mine = max(1, host // ranks)
    sources["cores"] = "host_cores // ranks_on_host"
    if ranks > host:
        notes.append(f"{ranks} ranks share {host} cores: each rank still gets 1 core, so the "
                     "host is oversubscribed")
    if workers > mine:
        notes.append(f"{workers} workers on {mine} cores: each runs 1 Numba thread and the "
                     "workers take turns on the cores (oversubscribed)")

    nt = _choose("numba_threads_per_worker", numba_threads, env, ENV_NUMBA,
                 max(1, mine // workers), "cores // workers", sources)
    pool = _numba_pool_size() if numba_pool is None else int(numba_pool)
    if nt > pool:
        notes.append(f"{nt} Numba threads per worker asked, but Numba's pool has {pool} "
                     f"(NUMBA_NUM_THREADS): using {pool}")
        nt = pool
        sources["numba_threads_per_worker"] += " (capped by NUMBA_NUM_THREADS)"

    bt = _choose("blas_threads_per_worker", blas_threads, env, ENV_BLAS,
                 max(1, mine // workers) if workers == 1 else 1,
                 "cores (one worker)" if workers == 1 else "1 (several workers share one pool)",
                 sources)

    rule = max(1, mine // CORES_PER_LOADER_THREAD) if augment else 0
    lw = _choose("loader_workers", loader_workers, env, ENV_LOADER, rule,
                 "cores // 8, at least 1 (random transform)" if augment
                 else "0 (a deterministic transform is cheaper than a thread hand-off)",
                 sources, minimum=0)
    return ThreadPlan(host_cores=host, ranks_on_host=ranks, cores=mine, workers=workers,
                      numba_threads_per_worker=nt, blas_threads_per_worker=bt,
                      loader_workers=lw, numba_threads_per_loader=1, sources=sources,
                      notes=tuple(notes))


# ---- applying it ------------------------------------------------------------------------------
def set_numba_threads(n: int) -> int:
    """numba.set_num_threads(n) for the calling thread only (Numba keeps the count per
    thread), capped at Numba's pool size; returns the thread's previous count."""
    import numba

    from . import kernels  # noqa: F401  (chooses the threading layer before Numba launches it)

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), int(numba.config.NUMBA_NUM_THREADS))))
    return previous


def apply_in_worker(plan: ThreadPlan, role: str = "worker") -> int:
    """Give the calling thread its Numba budget; call it first thing in each worker thread.

    role "worker": plan.numba_threads_per_worker; role "loader": plan.numba_threads_per_loader.
    Numba's thread count is thread-local, so this changes the calling thread only (and the
    kernels it launches). Returns the thread's previous count (to restore it, if needed).
    """
    if role not in ("worker", "loader"):
        raise ValueError(f"apply_in_worker: role must be 'worker' or 'loader', got {role!r}")
    n = plan.numba_threads_per_worker if role == "worker" else plan.numba_threads_per_loader
    return set_numba_threads(n)


def _blas_limit(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a core dependency; stay usable without it all the same
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n), user_api="blas")


@contextlib.contextmanager
def limits(plan: ThreadPlan, role: str = "worker") -> Iterator[ThreadPlan]:
    """Within the block: BLAS limited to plan.blas_threads_per_worker (the whole process) and
    the calling thread's Numba threads set for `role`; both restored on exit."""
    with _blas_limit(plan.blas_threads_per_worker):
        previous = apply_in_worker(plan, role)
        try:
            yield plan
        finally:
            set_numba_threads(previous)
