"""What every bench suite shares: how a kernel is timed, and reading a statistic back.

Two rules keep the suites usable with pytest-benchmark's own tools:

* Every row of a group does the same work, so pytest-benchmark's relative columns (and
  `pytest-benchmark compare --group-by=group`) compare like with like: a conv group is one
  layer and one pass ("mnist-conv2 forward"), never forward mixed with forward+backward.
* Under `--benchmark-disable` (the smoke run CI does) the fixture still calls the function
  once but measures nothing: `benchmark.stats` is None. `statistic()` returns None then, and
  the derived numbers (GFLOP/s, batches/s) are simply not recorded.

The figures use the median and its interquartile range, not the mean: on a shared machine a
few slow rounds (another process woke up) drag the mean, while the median stays put.
"""
import time

# Every timed test first calls its function for at least SETTLE_S seconds, untimed. Thread
# pools keep spinning after their last call: OpenBLAS's workers for tens of milliseconds,
# which on 2 cores made the Numba im2col's conv2 forward measure 1.68 ms right after the
# NumPy im2col (whose GEMMs are OpenBLAS's) and 1.15 ms on its own. Settling lets the
# previous test's threads go to sleep, whichever engine it ran.
SETTLE_S = 0.25
TARGET_S = 0.6  # about this much timing per benchmark: 2 to 20 rounds


def statistic(benchmark, name="median"):
    """stats.<name> in seconds (median, mean, min, q1, ...), or None when benchmarks are
    disabled (`--benchmark-disable`: the function ran once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return getattr(stats.stats, name)


def run_timed(benchmark, fn):
    """Time fn with an adaptive number of rounds (one call per round).

    Enabled: one warm-up call (Numba compilation, BLAS threads start), SETTLE_S seconds of
    untimed calls, then rounds chosen so that timing takes about TARGET_S. Disabled: the
    fixture calls fn once; nothing else is run, so the smoke test stays quick.
    """
    if benchmark.disabled:
        return benchmark.pedantic(fn, rounds=1, iterations=1)
    fn()
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < SETTLE_S:
        fn()
        calls += 1
    once = (time.perf_counter() - start) / calls
    rounds = int(min(20, max(2, TARGET_S / max(once, 1e-6))))
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def rate(benchmark, amount, scale=1.0):
    """amount / median time * scale (e.g. flops / s / 1e9 = GFLOP/s), or None if disabled."""
    t = statistic(benchmark, "median")
    return None if t is None else amount / t * scale


def record(benchmark, **extra):
    """benchmark.extra_info.update(extra), leaving out the entries that are None (a rate
    that a disabled run could not measure), so a JSON never carries a null number."""
    benchmark.extra_info.update({k: v for k, v in extra.items() if v is not None})
