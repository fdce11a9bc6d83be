"""`minigrad plot`: every figure from the small pytest-benchmark fixture; bad files refused."""
import argparse
import json
from pathlib import Path

import pytest

from minigrad import plot

FIXTURE = Path(__file__).parent / "fixtures" / "bench_results_small.json"


def _cli(argv):
    p = argparse.ArgumentParser(prog="minigrad")
    plot.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, plot.plot(FIXTURE, out)


def test_fixture_is_pytest_benchmark_json():
    doc = json.loads(FIXTURE.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "version"} <= set(doc)
    for b in doc["benchmarks"]:
        assert {"name", "group", "params", "stats", "extra_info"} <= set(b)
        assert {"mean", "stddev", "rounds", "median"} <= set(b["stats"])


@pytest.mark.parametrize("name", plot.FIGURES)
def test_every_figure_is_drawn(drawn, name):
    out, (written, skipped) = drawn
    assert skipped == {}
    for fmt in ("png", "svg"):
        f = out / f"{name}.{fmt}"
        assert f in written and f.stat().st_size > 5_000
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / f"{name}.svg").read_bytes()[:1000]


def test_speedup_is_pytorch_time_over_minigrad_time():
    recs = plot.load(FIXTURE)

    def mean(layer, p, algo):
        return next(r["mean"] for r in recs if r["extra"].get("layer") == layer
                    and r["extra"].get("pass") == p and r["extra"].get("algo") == algo)

    fig = plot.fig_speedup(recs)
    ax = fig.axes[0]                                   # forward
    assert {"im2col", "im2row", "kn2row", "kn2row-aa", "kn2col"} == \
        {c.get_label() for c in ax.containers}
    bars = next(c for c in ax.containers if c.get_label() == "im2col")
    want = mean("conv1", "forward", "pytorch") / mean("conv1", "forward", "im2col")
    assert bars[0].get_height() == pytest.approx(want)


def test_missing_data_is_skipped_with_a_note(tmp_path, capsys):
    doc = json.loads(FIXTURE.read_text())
    doc["benchmarks"] = [b for b in doc["benchmarks"] if b["group"] != "loader"
                         and "strategy" not in b["extra_info"]]
    f = tmp_path / "partial.json"
    f.write_text(json.dumps(doc))
    assert _cli(["plot", str(f), "--out", str(tmp_path / "figs"), "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert "skipped loader: no records of group 'loader'" in out
    assert "skipped dgc: no records with extra_info strategy and sparsity" in out
    assert f"wrote {tmp_path / 'figs' / 'speedup.png'}" in out
    assert not (tmp_path / "figs" / "loader.png").exists()
    assert not (tmp_path / "figs" / "speedup.svg").exists()


def _write(tmp_path, text, name="bad.json"):
    f = tmp_path / name
    f.write_text(text if isinstance(text, str) else json.dumps(text))
    return f


def _one(stats, extra=None):
    return {"benchmarks": [{"name": "test_x", "group": "g", "stats": stats,
                            "extra_info": extra or {}}]}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ([1, 2], 'no "benchmarks" list'),
    ({"machine_info": {}}, 'no "benchmarks" list'),
    ({"benchmarks": {"a": 1}}, 'no "benchmarks" list'),
    ({"benchmarks": [3]}, r"benchmarks\[0\] is not an object"),
    ({"benchmarks": [{"name": "test_x"}]}, r"benchmarks\[0\] \('test_x'\) has no \"stats\""),
    (_one({"min": 1.0}), r"stats.mean must be a positive number"),
    (_one({"mean": "fast"}), r"stats.mean must be a positive number"),
    (_one({"mean": 1.0}, {"flops": "many"}), r"extra_info\['flops'\] must be a number"),
])
def test_malformed_files_are_refused(tmp_path, content, message):
    f = _write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as e:
        plot.load(f)
    assert str(f) in str(e.value)


def test_cli_prints_the_error_and_exits_2(tmp_path, capsys):
    f = _write(tmp_path, "]")
    assert _cli(["plot", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"minigrad plot: {f}: not valid JSON")
    assert _cli(["plot", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_bench_conv_spellings_are_understood(tmp_path):
    """bench/test_bench_conv.py writes pass_="fwd"/"fwdbwd" and algo/backend "torch" for
    PyTorch, without an engine key: the same figures must come out."""
    doc = json.loads(FIXTURE.read_text())
    for b in doc["benchmarks"]:
        e = b["extra_info"]
        if "pass" in e:
            e["pass_"] = {"forward": "fwd", "forward+backward": "fwdbwd"}[e.pop("pass")]
            if e.pop("engine") == "pytorch":
                e["algo"] = e["backend"] = "torch"
    f = _write(tmp_path, doc, "bench.json")
    recs = plot.load(f)
    assert {r["extra"]["engine"] for r in recs if "layer" in r["extra"]} == \
        {"minigrad", "pytorch"}
    assert {r["extra"]["pass"] for r in recs if "layer" in r["extra"]} == set(plot.PASSES)
    written, skipped = plot.plot(f, tmp_path / "figs", formats=("png",))
    assert skipped == {} and len(written) == len(plot.FIGURES)
