"""The kernels release the GIL: a pure-Python thread keeps making progress while they run.

Why it matters: Hogwild's workers, threaded sync/async/DGC ranks and the data loader's
threads all run kernels from several Python threads at once. A kernel that holds the GIL
(a Numba function compiled without ``nogil=True``, or a Python loop) runs alone: every other
thread waits, and N threads train no faster than one (issue #18).

How it is measured. A "counter" thread spins a pure-Python loop (`n += 1`) that needs the
GIL for every iteration. Its rate is measured in alternating windows: alone (0.1 s), then
while a second thread calls one kernel in a loop (0.2 s), five times over, and the test
compares the two rates. If the kernel releases the GIL, the counter runs beside it and
keeps most of its solo rate (it loses some to sharing the CPU with the kernel thread, more
on a busy machine). If the kernel holds the GIL, the counter stops for the whole of every
call and keeps a few percent: only the moments between calls.

Why this is not a timing assertion. It compares two rates of the same loop, measured in
interleaved windows of the same process (so a change in the machine's load hits both), and
the threshold (25% of the solo rate) sits far from both outcomes: GIL released, about 45-90%
here (the kernel thread runs one Numba thread, so on two or more cores both threads can
run at once, and on one core they take turns); GIL held, about 5%. A slow or busy machine
makes both windows slower together, not one of them. Two things keep the "held" case near
0: the switch interval is set to 0.1 ms (so the counter, which waits for the GIL between
kernel calls, gives it back within 0.1 ms instead of CPython's default 5 ms), and each
kernel call lasts milliseconds. `test_the_measurement_catches_a_kernel_that_holds_the_gil`
runs the same measurement on a Numba function compiled without nogil and requires it to
fail.

Note: Numba releases the GIL around every prange loop of a parallel=True function even
without nogil=True; nogil=True is what releases it for the serial code around the loops
(allocations, set-up), and for functions that are not parallel at all.
"""
import sys
import threading
import time

import numba
import numpy as np
import pytest

from minigrad import kernels, threads
from minigrad.optim import SGD, Adam
from minigrad.tensor import Parameter

ROUNDS = 5  # alternate windows, so that a change in the machine's load hits both sides
SOLO_S = 0.1  # the counter alone, per round
BESIDE_S = 0.2  # the counter beside the kernel loop, per round: 1 s in all
THRESHOLD = 0.25  # of the solo rate
MIN_CALLS = 3  # kernel calls that must run in the windows (else the run proves nothing)


class Counter(threading.Thread):
    """A pure-Python loop that needs the GIL for each iteration; `count` is read live."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = False
        self.count = 0

    def run(self):
        while not self.stop:
            self.count += 1


class KernelLoop(threading.Thread):
    """Calls op() over and over while `go` is set, on one Numba thread (so that on two cores
    the counter has a core of its own); `busy` is held during each call."""

    def __init__(self, op):
        super().__init__(daemon=True)
        self.op, self.go, self.busy = op, threading.Event(), threading.Lock()
        self.done = False
        self.calls = 0

    def run(self):
        threads.set_numba_threads(1)
        while not self.done:
            if not self.go.wait(timeout=0.01):
                continue
            with self.busy:
                if self.go.is_set() and not self.done:
                    self.op()
                    self.calls += 1


def share_kept(op):
    """(counter's rate beside op / its rate alone, calls of op), over ROUNDS alternations."""
    op()  # compile (or load from cache) and warm up outside the measurement
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    counter, kernel = Counter(), KernelLoop(op)
    counted = {"solo": [0, 0.0], "beside": [0, 0.0]}

    def window(kind, seconds):
        n0, t0 = counter.count, time.perf_counter()
        time.sleep(seconds)
        n1, t1 = counter.count, time.perf_counter()
        counted[kind][0] += n1 - n0
        counted[kind][1] += t1 - t0

    try:
        counter.start()
        kernel.start()
        for _ in range(ROUNDS):
            window("solo", SOLO_S)
            kernel.go.set()
            window("beside", BESIDE_S)
            kernel.go.clear()
            with kernel.busy:  # the call in flight has finished: the next window is solo
                pass
    finally:
        kernel.done = counter.stop = True
        kernel.go.set()
        kernel.join()
        counter.join()
        sys.setswitchinterval(old)
    (n_solo, t_solo), (n_beside, t_beside) = counted["solo"], counted["beside"]
    return (n_beside / t_beside) / (n_solo / t_solo), kernel.calls


# ---- the operations ---------------------------------------------------------------------------
RNG = np.random.default_rng(0)
# MNIST conv2's shapes at batch 16: the direct algorithm's call stays well under a window
X = RNG.standard_normal((16, 32, 14, 14)).astype(np.float32)
W = RNG.standard_normal((64, 32, 3, 3)).astype(np.float32)
DY = RNG.standard_normal((16, 64, 14, 14)).astype(np.float32)
POOL_X = RNG.standard_normal((64, 32, 28, 28)).astype(np.float32)


def conv(algo):
    def op():
        kernels.conv2d_forward(X, W, stride=1, padding=1, algo=algo, backend="numba")
        kernels.conv2d_backward(DY, X, W, stride=1, padding=1, algo=algo, backend="numba")
    return op


def maxpool():
    y, argmax = kernels.maxpool2d_forward(POOL_X, 2, backend="numba")
    kernels.maxpool2d_backward(y, argmax, POOL_X.shape, 2, backend="numba")


def params():
    ps = [Parameter(RNG.standard_normal(s).astype(np.float32))
          for s in ((256, 784), (64, 32, 3, 3), (10, 256), (256,))]
    for p in ps:
        p.grad = RNG.standard_normal(p.data.shape).astype(np.float32)
    return ps


def optimizer_steps(make):
    opt = make(params())

    def op():
        for _ in range(4):
            opt.step()
    return op


def channel_ops():
    y = DY.copy()
    b = RNG.standard_normal(64).astype(np.float32)

    def op():
        kernels.bias_add(y, b)
        kernels.bias_grad(DY)
    return op


def gemm():
    a = RNG.standard_normal((64 * 196, 288)).astype(np.float32)
    b = RNG.standard_normal((288, 64)).astype(np.float32)
    return lambda: kernels.matmul(a, b)


def augmentation():
    from minigrad.data.transforms import batch_rng, mnist_augment

    augment = mnist_augment()
    batch = (RNG.integers(0, 256, (64, 28, 28)).astype(np.uint8), np.arange(64))
    return lambda: augment(batch, batch_rng(0, 0, 0))


OPS = {
    **{f"conv2d {algo}": conv(algo) for algo in kernels.ALGORITHMS},
    "maxpool2d": maxpool,
    "adam step": optimizer_steps(lambda ps: Adam(ps, lr=1e-3)),
    "sgd step": optimizer_steps(lambda ps: SGD(ps, lr=1e-2, momentum=0.9)),
    "bias_add, bias_grad": channel_ops(),
    "matmul": gemm(),
    "mnist_augment": augmentation(),
}


@pytest.mark.parametrize("name", list(OPS))
def test_kernel_releases_the_gil(name):
    kept, calls = share_kept(OPS[name])
    assert calls >= MIN_CALLS, f"{name}: only {calls} calls; lengthen BESIDE_S"
    assert kept >= THRESHOLD, (
        f"{name}: a pure-Python thread kept {kept:.0%} of its solo rate while {name} ran "
        f"(>= {THRESHOLD:.0%} expected): something in it holds the GIL (a Numba kernel "
        "without nogil=True, or Python-level work per element)")


def test_conv_pool_and_optimizer_loop_releases_the_gil():
    """The training step's kernels one after the other, as a worker thread runs them."""
    step = optimizer_steps(lambda ps: Adam(ps, lr=1e-3))

    def op():
        conv("im2col")()
        maxpool()
        step()

    kept, calls = share_kept(op)
    assert calls >= MIN_CALLS
    assert kept >= THRESHOLD, f"kept {kept:.0%} of the solo rate"


@numba.njit(cache=False)  # no nogil: holds the GIL for the whole call
def _holds_the_gil(a):
    s = 0.0
    for _ in range(20):
        for i in range(a.shape[0]):
            s += np.sin(a[i])
    return s


def test_the_measurement_catches_a_kernel_that_holds_the_gil():
    a = np.linspace(0.0, 1.0, 200_000)
    kept, calls = share_kept(lambda: _holds_the_gil(a))
    assert calls >= MIN_CALLS
    assert kept < THRESHOLD, f"a GIL-holding kernel let the counter keep {kept:.0%}"
