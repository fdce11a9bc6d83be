"""`python bench/strategies.py` writes the strategies table (Markdown and JSON) and its figure.

The command runs once, in --quick mode on synthetic data (no MNIST needed), as a user runs
it. The checks are about what the table says, not how fast anything was: every strategy
minigrad has is a row, each row has a cell for each of the review's criteria, the byte
counts are the ones the algorithms imply, the fault probes show what the tests show, and
--update-docs rewrites only the marked region of a page.
"""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minigrad import kernels

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "strategies.py"
TRAINING = ("sync", "hogwild", "async", "dgc", "model-parallel", "tensor-slicing")
REVIEW_ROWS = ("data parallelism", "model parallelism", "tensor decomposition",
               "im2row/im2col", "kn2row/kn2col", "deep gradient compression",
               "asynchronous updates", "tensor slicing")
MNIST_CNN_PARAMS = 429_258


def _module():
    spec = importlib.util.spec_from_file_location("bench_strategies", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def strategies():
    return _module()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("strategies")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--data", "synthetic", "--out", str(out),
         "--fault-timeout", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "strategies.json").read_text()), proc.stdout


def _rows(doc):
    return {r["key"]: r for r in doc["rows"]}


def test_writes_the_table_json_and_figure(run):
    out, _, stdout = run
    for name in ("strategies.md", "strategies.json", "strategies.png", "strategies.svg"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "strategies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "QUICK SMOKE RUN" in (out / "strategies.md").read_text()
    assert "strategies.json" in stdout


def test_every_strategy_is_a_row(run):
    _, doc, _ = run
    rows = _rows(doc)
    expected = set(TRAINING) | set(kernels.ALGORITHMS) | {"tucker2", "cp"}
    assert set(rows) == expected
    assert {r["review_row"] for r in doc["rows"]} >= set(REVIEW_ROWS)
    for key in TRAINING:
        assert set(rows[key]["runs"]) == set(rows[key]["memory"]) == {"1", "2"}, key


def test_markdown_table_has_a_cell_per_criterion(run, strategies):
    out, doc, _ = run
    lines = [ln for ln in (out / "strategies.md").read_text().splitlines()
             if ln.startswith("|")]
    header, rule, body = lines[0], lines[1], lines[2:]
    columns = len(strategies.COLUMNS)
    assert header.count("|") == rule.count("|") == columns + 1
    assert len(body) == len(doc["rows"])
    for line in body:
        assert line.count("|") == columns + 1, line  # no cell may hold a stray "|"
    for criterion in ("scalability", "parallelism", "fault tolerance", "memory efficiency",
                      "communication bandwidth", "test accuracy"):
        assert criterion in header


def test_numbers_are_measured(run):
    _, doc, _ = run
    for r in doc["rows"]:
        for n, rec in r["runs"].items():
            assert rec["seconds_per_epoch"] > 0, (r["key"], n)
            assert 0.0 <= rec["test_accuracy"] <= 1.0
        for n, mem in r["memory"].items():
            assert mem["peak_bytes_per_worker"] > 0, (r["key"], n)
        if r["kind"] == "training":
            assert r["speedup"]["1"] == 1.0
        else:
            k = r["kernel"]
            assert k["seconds_1_thread"] > 0 and k["peak_bytes"] > 0


def test_bytes_per_step_are_what_each_algorithm_sends(run):
    rows = _rows(run[1])
    gradient = 4 * MNIST_CNN_PARAMS  # float32
    for key in ("sync", "dgc", "model-parallel", "tensor-slicing", "hogwild"):
        assert rows[key]["runs"]["1"]["moved_per_step_per_worker"] == 0, key
    # a ring allreduce moves 2 (N-1)/N of the gradient per rank: at N = 2, one gradient
    assert rows["sync"]["runs"]["2"]["moved_per_step_per_worker"] == pytest.approx(gradient)
    assert rows["hogwild"]["runs"]["2"]["moved_per_step_per_worker"] == 0
    # DGC sends far less once sparse; the parameter server talks even to a single worker
    dgc = rows["dgc"]["runs"]["2"]
    assert dgc["moved_per_step_per_worker_final"] < gradient / 100
    assert dgc["moved_per_step_per_worker"] < gradient
    assert rows["async"]["runs"]["1"]["moved_per_step_per_worker"] >= gradient
    for key in ("model-parallel", "tensor-slicing"):
        assert rows[key]["runs"]["2"]["moved_per_step_per_worker"] > 0, key


def test_fault_probes_show_what_the_tests_show(run):
    rows = _rows(run[1])
    for key in ("sync", "dgc", "hogwild"):
        f = rows[key]["fault"]
        assert f["outcome"] == "stops" and f["error"] == "DistributedRunFailed", (key, f)
        assert f["resumable"]
    f = rows["async"]["fault"]
    assert f["outcome"] == "continues" and f["dead_workers"] == [1]
    assert 0 < f["updates_applied"] < f["updates_expected"]
    for key in ("model-parallel", "tensor-slicing"):
        assert rows[key]["fault"]["outcome"] in ("stops", "hung"), rows[key]["fault"]


def test_cited_tests_exist(strategies):
    for letter, (ref, _) in strategies.EVIDENCE.items():
        path, name = ref.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), (letter, ref)
    for key, letters in strategies.EVIDENCE_OF.items():
        assert set(letters) <= set(strategies.EVIDENCE), key


def test_decomposition_rows(run):
    rows = _rows(run[1])
    for key in ("tucker2", "cp"):
        d = rows[key]["decomposition"]
        before, after = d["conv2_params"]
        assert after <= before / 4 + 64  # the ratio bounds weight and bias together
        assert d["model_params"][0] - d["model_params"][1] == before - after
        assert set(rows[key]["memory"]) == {"1", "2"}


def test_update_docs_rewrites_only_the_marked_region(strategies, run, tmp_path):
    page = tmp_path / "strategies.md"
    shutil.copy(ROOT / "docs" / "strategies.md", page)
    original = page.read_text()
    assert strategies.BEGIN in original and strategies.END in original
    md = (run[0] / "strategies.md").read_text()
    assert strategies.update_docs(md, run[0], docs=[page, tmp_path / "absent.md"]) == [page]
    once = page.read_text()
    head, tail = original.split(strategies.BEGIN)[0], original.split(strategies.END)[1]
    assert once.startswith(head) and once.endswith(tail)
    assert "| data parallel (sync allreduce) |" in once
    assert "strategies.png)" in once
    strategies.update_docs(md, run[0], docs=[page])
    assert page.read_text() == once  # a second run changes nothing
    with pytest.raises(ValueError, match="markers"):
        strategies.replace_between_markers("no markers here", "x")
