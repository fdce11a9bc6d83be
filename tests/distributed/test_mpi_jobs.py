"""Whole MPI jobs started by the test itself: ranks over TCP, and a rank killed mid-run.

These tests are not marked `mpi`: each starts its own `mpiexec` (so they run in the
ordinary test run, CI included) and is skipped where mpiexec or mpi4py is missing, or when
pytest itself runs under mpiexec (a nested mpiexec would inherit the outer job's PMI
environment).

TCP, as between machines. MPICH's ch4 device sends messages between ranks on one host
through shared memory; MPIR_CVAR_NOLOCAL=1 makes it treat every rank as remote. Its
network module may still use shared memory underneath (UCX picks sysv/cma transports for
local peers), so UCX_TLS=tcp (UCX netmod) and FI_PROVIDER=tcp (OFI netmod) pin that to TCP
sockets. The job reports how many established TCP connections each rank holds, and the
test requires some: a run that silently used shared memory would fail here.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigrad.checkpoint import read_checkpoint

HERE = Path(__file__).resolve().parent
JOB = HERE / "mpi_job.py"
TCP_ENV = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH3_NOLOCAL": "1", "UCX_TLS": "tcp",
           "FI_PROVIDER": "tcp"}


def _skip_reason():
    if shutil.which("mpiexec") is None:
        return "mpiexec is not installed"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    if any(k.startswith(("PMI_", "PMIX_", "HYDRA_")) for k in os.environ):
        return "already inside an MPI job"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def mpiexec(n, *args, env=None, timeout=240):
    """Run mpi_job.py on n ranks; (return code, stdout + stderr)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", **(env or {})}
    cmd = ["mpiexec", "-print-all-exitcodes", "-n", str(n), sys.executable, str(JOB),
           *map(str, args)]
    p = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def result(out_dir, strategy):
    with np.load(out_dir / f"{strategy}.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("n", [2, 3])
def test_sync_and_dgc_over_tcp(n, tmp_path):
    code, log = mpiexec(n, "--strategies", "sync,dgc", "--epochs", "2", "--out", tmp_path,
                        env=TCP_ENV)
    assert code == 0, log
    for strategy in ("sync", "dgc"):
        r = result(tmp_path, strategy)
        assert r["test_accuracy"] > 0.8, (strategy, log)
        tcp = r["tcp"]
        assert len(tcp) == n
        if np.all(tcp >= 0):  # /proc readable: every rank talks through TCP sockets
            assert np.all(tcp > 0), (tcp, log)


@pytest.mark.parametrize("strategy", ["sync", "dgc"])
def test_a_killed_rank_ends_the_job_and_resume_matches_a_run_through(strategy, tmp_path):
    ran, killed, resumed = (tmp_path / d for d in ("ran", "killed", "resumed"))
    for d in (ran, killed, resumed):
        d.mkdir()
    ckpt = str(tmp_path / "{strategy}.npz")
    code, log = mpiexec(2, "--strategies", strategy, "--epochs", "2", "--out", ran)
    assert code == 0, log

    # rank 1's process is SIGKILLed at its 5th step of epoch 2 (32 steps per epoch)
    code, log = mpiexec(2, "--strategies", strategy, "--epochs", "2", "--out", killed,
                        "--save", ckpt, "--kill", "1:37", timeout=120)
    assert code != 0, log
    # the job names the rank: rank 0's map of pids, and mpiexec's banner with the pid
    pid = next(line.split("rank 1 = pid ")[1].split()[0] for line in log.splitlines()
               if "rank 1 = pid " in line)
    assert f"PID {pid} " in log, log
    assert not (killed / f"{strategy}.npz").exists()
    assert read_checkpoint(ckpt.format(strategy=strategy))[2]["epoch"] == 1

    code, log = mpiexec(2, "--strategies", strategy, "--epochs", "2", "--out", resumed,
                        "--resume", ckpt)
    assert code == 0, log
    a, b = result(ran, strategy), result(resumed, strategy)
    assert int(b["resumed_from_epoch"]) == 1
    np.testing.assert_array_equal(a["params"], b["params"])
    assert float(a["test_accuracy"]) == float(b["test_accuracy"])
