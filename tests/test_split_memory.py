"""`python bench/split_memory.py --quick`: the records of memory and bytes per worker for
data, model and spatial parallelism, on synthetic data (no MNIST needed), in-process.

The numbers are counts, so they are checked against what the strategies imply: model
parallelism halves the parameters and optimizer state of each of 2 workers, data
parallelism halves the activations and moves one gradient per step (ring allreduce at
N = 2), tensor slicing exchanges halo rows, and one worker talks to nobody.
"""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRADIENT = 4 * 429_258  # the MNIST CNN's float32 gradient (= its parameter bytes)


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import split_memory

    out = tmp_path_factory.mktemp("split")
    assert split_memory.main(["--quick", "--data", "synthetic", "--out", str(out)]) == 0
    lines = (out / "split.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in lines) == 1 + 3 * 2  # head, rows
    return out, json.loads((out / "split.json").read_text())


def _by(doc):
    return {(b["extra_info"]["strategy"], b["extra_info"]["workers"]): b["extra_info"]
            for b in doc["benchmarks"]}


def test_quick_mode_writes_a_record_per_strategy_and_n_with_every_field(doc):
    from bench.split_memory import FIELDS

    _, d = doc
    by = _by(d)
    assert set(by) == {(s, n) for s in ("sync", "model-parallel", "tensor-slicing")
                       for n in (1, 2)}
    for key, e in by.items():
        for field in FIELDS:
            assert isinstance(e[field], (int, float)) and e[field] >= 0, (key, field)
        assert e["param_bytes_total"] == GRADIENT and e["steps"] == 2
    for b in d["benchmarks"]:
        assert b["group"] == "split-memory" and b["stats"]["mean"] > 0


def test_the_counts_are_what_each_split_implies(doc):
    by = _by(doc[1])
    mp1, mp2 = by["model-parallel", 1], by["model-parallel", 2]
    assert mp1["param_bytes_per_worker"] == GRADIENT
    assert mp2["param_bytes_per_worker"] < 0.51 * mp1["param_bytes_per_worker"]
    assert mp2["optimizer_bytes_per_worker"] == mp2["param_bytes_per_worker"]  # momentum
    for s in ("sync", "tensor-slicing"):                 # whole weights on every worker
        assert by[s, 2]["param_bytes_per_worker"] == GRADIENT
    sync1, sync2 = by["sync", 1], by["sync", 2]
    assert sync2["activation_bytes_per_worker"] == \
        pytest.approx(sync1["activation_bytes_per_worker"] / 2, rel=0.01)
    assert sync2["moved_per_step_per_worker"] == pytest.approx(GRADIENT)
    for s in ("sync", "model-parallel", "tensor-slicing"):
        assert by[s, 1]["moved_per_step_per_worker"] == 0, s
        assert by[s, 2]["moved_per_step_per_worker"] > 0, s
    ts2 = by["tensor-slicing", 2]
    assert 0 < ts2["halo_bytes_per_step_per_worker"] < ts2["moved_per_step_per_worker"]
    assert by["tensor-slicing", 1]["halo_bytes_per_step_per_worker"] == 0


def test_minigrad_plot_reads_it_as_the_split_figure(doc):
    from minigrad.tools import plot

    out, _ = doc
    records, info = plot.read(out / "split.json")
    assert plot.figures_of(records) == ["split"]
    assert info["machine"] and "split.json" == info["source"]
    assert not isinstance(plot.fig_split(records, info), str)
