"""The strategies table's training rows as a pytest-benchmark group: one epoch of each
strategy at N = 1, 2, 4 workers (threads), with bench/strategies.py's own functions.

    pytest bench/test_bench_strategies.py --benchmark-json=strategies.json
    pytest-benchmark compare 0001 0002 --group-by=group      # two runs, like with like

`python bench/strategies.py` is the command that writes the table (Markdown, JSON, figure),
with its fault probes, lowerings and decompositions; this suite is the part that fits
pytest-benchmark's model (time a callable, compare runs, `minigrad plot`), so a change to a
strategy can be compared against a saved run. Model: the MNIST CNN; data: MNIST-shaped
synthetic images (`strategies.load_data`, so no download and no MNIST needed), 1,024 per
epoch, global batch 64. Each round trains a fresh model for one epoch (3 rounds, one untimed
warm-up round first). extra_info: strategy, workers, seconds_per_epoch (training only, the
timed round also evaluates), bytes moved and sent per step per worker, test_accuracy, and
when timing is enabled the traced peak memory per worker (`strategies.memory_probe`).

Under `--benchmark-disable` (CI's smoke run) each case trains once on 128 images.
"""
import pytest

from bench import strategies as S
from bench.common import record, statistic

WORKERS = (1, 2, 4)
LIMIT, SMOKE_LIMIT, ROUNDS = 1024, 128, 3


def config(disabled):
    return S.Config(data="synthetic", limit=SMOKE_LIMIT if disabled else LIMIT,
                    eval_limit=256, epochs=1, probe_steps=2)


@pytest.mark.benchmark(group="strategies-epoch")
@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("strategy", [key for key, _, _ in S.TRAINING])
def test_strategy_epoch(benchmark, strategy, workers):
    cfg = config(benchmark.disabled)
    data = S.load_data(cfg)
    last = {}

    def run():
        s, _ = S.train(strategy, S.make_model(cfg), data, cfg, workers)
        last["summary"] = s

    if benchmark.disabled:
        benchmark.pedantic(run, rounds=1, iterations=1)
    else:
        benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    s = last["summary"]
    extra = dict(strategy=strategy, workers=workers, steps=s["steps"],
                 seconds_per_epoch=s["seconds_per_epoch"], test_accuracy=s["test_accuracy"],
                 moved_per_step_per_worker=S.moved_per_step_per_worker(strategy, s),
                 sent_per_step_per_worker=S.sent_per_step_per_worker(strategy, s))
    if statistic(benchmark) is not None:  # timing enabled: the memory probe too
        mem = S.memory_probe(strategy, cfg, data, workers, S.make_model(cfg))
        extra["peak_bytes_per_worker"] = mem["peak_bytes_per_worker"]
    record(benchmark, **extra)
    assert s["workers"] == workers and 0.0 <= s["test_accuracy"] <= 1.0
    if workers == 1 and strategy != "async":
        assert extra["moved_per_step_per_worker"] == 0  # one worker talks to nobody
