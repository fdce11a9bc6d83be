"""The interleaved measurements (bench/interleaved_conv.py, compare_mnist.py --rounds): every
engine in every round, ratios paired by round. No timing is asserted: the tests check which
calls were made and how the rounds are combined, on made-up times where the answer is known.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import interleaved_conv as ic

ROOT = Path(__file__).resolve().parents[1]


def test_ratios_are_paired_by_round():
    # PyTorch's round 2 is slow (the host was busy): a ratio of medians would say minigrad
    # is 1.5x PyTorch, the paired ratios say 1.0x in every round, and that is the answer
    times = {"pytorch": [1.0, 4.0, 1.0], "im2col": [1.0, 4.0, 1.0],
             "kn2row": [2.0, 8.0, 2.0]}
    rows = ic.summarise("mnist-conv2", "forward+backward", times)
    by = {r["algo"]: r for r in rows}
    assert set(by) == {"im2col", "kn2row", "pytorch"}
    assert by["im2col"]["ratio_to_pytorch"] == pytest.approx(1.0)
    assert by["kn2row"]["ratio_to_pytorch"] == pytest.approx(2.0)
    assert by["kn2row"]["ratio_to_fastest"] == pytest.approx(2.0)
    assert by["im2col"]["ratio_to_fastest"] == pytest.approx(1.0)
    assert by["pytorch"]["ratio_to_fastest"] is None
    assert by["im2col"]["median_ms"] == pytest.approx(1000.0)
    flops = ic.pass_flops("mnist-conv2", "forward+backward")
    assert by["kn2row"]["gflops"] == pytest.approx(flops / 2.0 / 1e9)


def test_every_engine_runs_in_every_round(monkeypatch):
    calls = []
    fake = {name: (lambda name=name: calls.append(name)) for name in ("im2col", "kn2row")}
    monkeypatch.setattr(ic, "engines", lambda *a, **k: dict(fake))
    monkeypatch.setattr(ic, "sgemm_gflops", lambda: calls.append("sgemm") or 1.0)
    monkeypatch.setattr(ic, "SETTLE_S", 0.0)
    times, sg = ic.run_layer("mnist-conv1", "forward", ["im2col", "kn2row"], rounds=4, seed=1)
    assert {k: len(v) for k, v in times.items()} == {"im2col": 4, "kn2row": 4}
    assert sg == (1.0, 1.0)
    # sgemm before and after the rounds, never inside them (its threads would slow the next)
    assert calls[0] == calls[-1] == "sgemm" and calls.count("sgemm") == 2
    # per turn: the one settle call that always runs (SETTLE_S = 0), then REPS timed; the
    # turns: one warm-up call each, an untimed round, then 4 timed rounds
    per_turn = 1 + ic.REPS
    assert calls.count("im2col") == 1 + 5 * per_turn
    first_round = 1 + 2 + 2 * per_turn  # after the sgemm, the warm-ups, the untimed round
    firsts = [calls[first_round + r * 2 * per_turn] for r in range(4)]
    assert len(set(firsts)) > 1  # the order is shuffled per round


def test_a_real_layer_end_to_end(tmp_path):
    out = tmp_path / "il.json"
    doc = ic.main(["--layers", "mnist-conv1", "--pass", "forward", "--algos", "im2col",
                   "kn2col", "--rounds", "2", "--no-torch", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["layers"][0]["layer"] == "mnist-conv1"
    rows = {r["algo"]: r for r in saved["layers"][0]["rows"]}
    assert set(rows) == {"im2col", "kn2col"}  # no PyTorch row, and no ratio to it
    assert all(r["ratio_to_pytorch"] is None and r["median_ms"] > 0 for r in rows.values())
    assert all(len(v) == 2 for v in saved["layers"][0]["seconds"].values())
    assert doc["machine"]["cores"] == os.cpu_count()


@pytest.mark.mnist
def test_compare_mnist_rounds_pair_the_ratios(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "cm.json"
    r = subprocess.run([sys.executable, "bench/compare_mnist.py", "--limit", "192",
                        "--algos", "im2col", "--rounds", "2", "--workers", "1",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)  # $MINIGRAD_DATA: tests/conftest.py
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["algo"]: row for row in json.loads(out.read_text())["rows"]}
    torch_s, ours = rows["-"]["seconds_per_round"], rows["im2col"]["seconds_per_round"]
    assert len(torch_s) == len(ours) == 2
    paired = [a / b for a, b in zip(ours, torch_s, strict=True)]
    assert rows["im2col"]["ratio_per_round"] == pytest.approx(paired)
    assert rows["im2col"]["ratio_to_pytorch"] == pytest.approx(float(np.median(paired)))
    assert rows["im2col"]["seconds_per_epoch"] == pytest.approx(float(np.median(ours)))


@pytest.mark.mnist
def test_the_training_step_mode(tmp_path):
    """--layers mnist-step times MNIST CNN training steps, counted with the step's flops."""
    out = tmp_path / "step.json"
    ic.main(["--layers", "mnist-step", "--algos", "im2col", "--rounds", "1", "--no-torch",
             "--json", str(out)])
    layer = json.loads(out.read_text())["layers"][0]
    assert layer["layer"] == "mnist-step" and layer["pass"] == "step"
    (row,) = layer["rows"]
    assert row["algo"] == "im2col"
    assert row["gflops"] == pytest.approx(ic.step_flops() / (row["median_ms"] / 1e3) / 1e9)
