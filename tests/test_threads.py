"""The thread budget (minigrad.threads): the rule, the overrides, and applying it per thread."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numba
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigrad import threads

NO_ENV: dict = {}  # plan(env=NO_ENV): the rule alone, whatever this machine's variables say


def make(workers=1, cores=2, **kw):
    kw.setdefault("env", NO_ENV)
    kw.setdefault("ranks_on_host", 1)
    kw.setdefault("numba_pool", 1024)  # a pool larger than any core count here
    return threads.plan(workers, cores=cores, **kw)


# ---- the rule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cores,workers,numba_threads,blas", [
    (2, 1, 2, 2), (2, 2, 1, 1), (2, 4, 1, 1),
    (8, 1, 8, 8), (8, 2, 4, 1), (8, 4, 2, 1), (8, 3, 2, 1),
])
def test_budgets_for_1_2_4_workers_on_2_and_8_cores(cores, workers, numba_threads, blas):
    p = make(workers, cores)
    assert (p.cores, p.workers) == (cores, workers)
    assert p.numba_threads_per_worker == numba_threads
    assert p.blas_threads_per_worker == blas
    assert p.loader_workers == 0 and p.numba_threads_per_loader == 1
    assert p.sources["host_cores"] == "argument"
    assert p.sources["numba_threads_per_worker"] == "cores // workers"


@given(cores=st.integers(1, 256), workers=st.integers(1, 64), ranks=st.integers(1, 16))
def test_workers_times_numba_threads_never_exceed_the_cores(cores, workers, ranks):
    p = make(workers, cores, ranks_on_host=ranks)
    assert p.cores == max(1, cores // ranks)
    if workers <= p.cores:
        assert workers * p.numba_threads_per_worker <= p.cores
        assert p.numba_threads_per_worker >= p.cores // workers  # and no core left idle
    else:
        assert p.numba_threads_per_worker == 1
        assert any("oversubscribed" in n for n in p.notes)
    assert p.blas_threads_per_worker == (p.cores if workers == 1 else 1)


def test_more_workers_than_cores_is_noted():
    p = make(4, 2)
    assert p.numba_threads_per_worker == 1
    assert any("4 workers on 2 cores" in n for n in p.notes)
    assert make(2, 2).notes == ()


def test_ranks_on_one_host_share_its_cores():
    p = make(1, 8, ranks_on_host=2)
    assert (p.host_cores, p.ranks_on_host, p.cores) == (8, 2, 4)
    assert p.numba_threads_per_worker == 4 and p.blas_threads_per_worker == 4
    p = make(1, 2, ranks_on_host=4)  # more ranks than cores: 1 each, and said so
    assert p.cores == 1 and any("oversubscribed" in n for n in p.notes)


@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 1), (8, 1), (16, 2), (64, 8)])
def test_loader_threads_only_for_random_transforms(cores, expected):
    assert make(1, cores).loader_workers == 0
    p = make(1, cores, augment=True)
    assert p.loader_workers == expected
    assert "random" in p.sources["loader_workers"]


def test_numba_pool_size_caps_the_numba_threads():
    p = make(1, 8, numba_pool=2)
    assert p.numba_threads_per_worker == 2
    assert "NUMBA_NUM_THREADS" in p.sources["numba_threads_per_worker"]
    assert any("NUMBA_NUM_THREADS" in n for n in p.notes)


def test_default_cores_are_the_affinity_mask():
    p = threads.plan(env=NO_ENV, ranks_on_host=1)
    assert p.host_cores == threads.host_cores()
    if hasattr(os, "sched_getaffinity"):
        assert p.host_cores == len(os.sched_getaffinity(0))
        assert p.sources["host_cores"] == "affinity"
    assert p.numba_threads_per_worker == min(p.cores, numba.config.NUMBA_NUM_THREADS)


# ---- overrides ----------------------------------------------------------------------------------
def test_environment_variables_override_the_rule():
    env = {"MINIGRAD_THREADS": "8", "MINIGRAD_NUMBA_THREADS": "3",
           "MINIGRAD_BLAS_THREADS": "2", "MINIGRAD_LOADER_WORKERS": "5"}
    p = threads.plan(2, env=env, ranks_on_host=1, numba_pool=64)
    assert (p.host_cores, p.numba_threads_per_worker, p.blas_threads_per_worker,
            p.loader_workers) == (8, 3, 2, 5)
    assert p.sources == {"host_cores": "env MINIGRAD_THREADS", "ranks_on_host": "argument",
                         "cores": "host_cores // ranks_on_host",
                         "numba_threads_per_worker": "env MINIGRAD_NUMBA_THREADS",
                         "blas_threads_per_worker": "env MINIGRAD_BLAS_THREADS",
                         "loader_workers": "env MINIGRAD_LOADER_WORKERS"}
    only_cores = threads.plan(2, env={"MINIGRAD_THREADS": "8"}, ranks_on_host=1, numba_pool=64)
    assert only_cores.numba_threads_per_worker == 4  # the rule, on the cores given


def test_arguments_override_the_environment():
    env = {"MINIGRAD_THREADS": "8", "MINIGRAD_NUMBA_THREADS": "3", "MINIGRAD_LOADER_WORKERS": "5"}
    p = threads.plan(1, loader_workers=0, cores=4, numba_threads=1, blas_threads=1, env=env,
                     ranks_on_host=1, numba_pool=64)
    assert (p.host_cores, p.numba_threads_per_worker, p.blas_threads_per_worker,
            p.loader_workers) == (4, 1, 1, 0)
    assert {p.sources[k] for k in ("host_cores", "numba_threads_per_worker",
                                   "blas_threads_per_worker", "loader_workers")} == {"argument"}


@pytest.mark.parametrize("var,value", [("MINIGRAD_THREADS", "0"), ("MINIGRAD_THREADS", "two"),
                                       ("MINIGRAD_NUMBA_THREADS", "-1"),
                                       ("MINIGRAD_LOADER_WORKERS", "-1")])
def test_bad_environment_values_name_the_variable(var, value):
    with pytest.raises(ValueError, match=var):
        threads.plan(env={var: value}, ranks_on_host=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        threads.plan(0, env=NO_ENV, ranks_on_host=1)
    with pytest.raises(ValueError, match="host_cores"):
        threads.plan(cores=0, env=NO_ENV, ranks_on_host=1)
    with pytest.raises(ValueError, match="loader_workers"):
        threads.plan(loader_workers=-1, env=NO_ENV, ranks_on_host=1)


def test_as_dict_is_json_and_says_everything():
    p = make(4, 2, augment=True)
    d = json.loads(json.dumps(p.as_dict()))
    assert d["cores"] == 2 and d["workers"] == 4 and d["numba_threads_per_worker"] == 1
    assert d["loader_workers"] == 1 and d["sources"]["host_cores"] == "argument"
    assert d["notes"] and isinstance(d["notes"], list)
    assert "4 workers x 1 Numba thread" in p.describe()


# ---- local ranks --------------------------------------------------------------------------------
def test_local_ranks_is_1_without_mpi(monkeypatch):
    for k in list(os.environ):
        if k.startswith(threads._MPI_JOB_PREFIXES):
            monkeypatch.delenv(k)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    assert threads.local_ranks.__wrapped__() == 1  # uncached: this process, as it is now
    assert "mpi4py.MPI" not in sys.modules  # and it did not start MPI to find out


def test_local_ranks_reads_the_launcher_s_count(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("MPI_LOCALNRANKS", "3")
    assert threads.local_ranks.__wrapped__() == 3


def _mpi_skip_reason():
    if shutil.which("mpiexec") is None:
        return "mpiexec is not installed"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    if any(k.startswith(("PMI_", "PMIX_", "HYDRA_")) for k in os.environ):
        return "already inside an MPI job"
    return None


@pytest.mark.skipif(_mpi_skip_reason() is not None, reason=str(_mpi_skip_reason()))
def test_local_ranks_under_mpiexec_counts_the_ranks_on_this_host():
    script = ("import os; from minigrad import threads; "  # one write() per rank: whole lines
              "os.write(1, f'{threads.local_ranks()} {threads._split_type_size()} "
              "{threads.plan(2).cores}\\n'.encode())")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "MINIGRAD_THREADS": "8"}
    p = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-c", script], env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [line.split() for line in p.stdout.splitlines() if line.strip()]
    # both ranks: 2 ranks here, by the launcher's count and by Split_type; 8 cores / 2 ranks
    assert lines == [["2", "2", "4"], ["2", "2", "4"]], p.stdout + p.stderr


# ---- applying it --------------------------------------------------------------------------------
def in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_apply_in_worker_sets_the_calling_thread_only():
    pool = numba.config.NUMBA_NUM_THREADS
    main_before = numba.get_num_threads()
    p = make(2, 2)  # 1 Numba thread per worker

    def worker():
        threads.apply_in_worker(p)
        return numba.get_num_threads()

    assert in_new_thread(worker) == 1
    assert numba.get_num_threads() == main_before
    big = make(1, 64)  # more than Numba's pool: capped when applied
    assert in_new_thread(lambda: (threads.apply_in_worker(big),
                                  numba.get_num_threads())[1]) == min(64, pool)
    loader = make(1, 2)
    assert in_new_thread(lambda: (threads.apply_in_worker(loader, "loader"),
                                  numba.get_num_threads())[1]) == 1
    with pytest.raises(ValueError, match="role"):
        threads.apply_in_worker(p, "server")


def test_limits_sets_blas_and_numba_and_restores_both():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before_blas, before_numba = blas_threads(), numba.get_num_threads()
    p = make(2, 2)
    with threads.limits(p):
        if before_blas:
            assert blas_threads() == {1}
        assert numba.get_num_threads() == 1
    assert blas_threads() == before_blas
    assert numba.get_num_threads() == before_numba
