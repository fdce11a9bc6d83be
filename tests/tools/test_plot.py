"""`minigrad plot`: every figure from the small pytest-benchmark fixture; bad files refused."""
import argparse
import json
from pathlib import Path

import pytest

from minigrad.tools import plot

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bench_results_small.json"


def _cli(argv):
    p = argparse.ArgumentParser(prog="minigrad")
    plot.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, plot.plot(FIXTURE, out)


@pytest.fixture(scope="module")
def loaded():
    return plot.read(FIXTURE)


def test_fixture_is_pytest_benchmark_json():
    doc = json.loads(FIXTURE.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "version"} <= set(doc)
    for b in doc["benchmarks"]:
        assert {"name", "group", "params", "stats", "extra_info"} <= set(b)
        assert {"mean", "stddev", "rounds", "median"} <= set(b["stats"])


@pytest.mark.parametrize("name", plot.FIGURES)
def test_every_figure_is_drawn(drawn, name):
    out, (written, skipped, removed) = drawn
    assert skipped == {} and removed == {}
    for fmt in ("png", "svg"):
        f = out / f"{name}.{fmt}"
        assert f in written and f.stat().st_size > 5_000
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / f"{name}.svg").read_bytes()[:1000]


@pytest.mark.parametrize("name", plot.FIGURES)
def test_every_title_says_what_it_ran_on(loaded, name):
    recs, info = loaded
    fig = plot.DRAW[name](recs, info)
    title = fig.get_suptitle()
    assert "CPU: fixture CPU, 2 logical CPUs" in title and "commit 0000000+dirty" in title
    if name in ("speedup", "gflops", "workspace"):
        assert "float32" in title


def _mean(recs, layer, p, algo, backend=None):
    return next(r["mean"] for r in recs if r["extra"].get("layer") == layer
                and r["extra"].get("pass") == p and r["extra"].get("algo") == algo
                and backend in (None, r["extra"].get("backend")))


def _bars(ax):
    return {c.get_label(): [b.get_height() for b in c] for c in ax.containers}


def test_speedup_is_pytorch_time_over_numba_time_without_numpy(loaded):
    recs, info = loaded
    assert any(r["extra"].get("backend") == "numpy" for r in recs)
    fig = plot.fig_speedup(recs, info)
    ax = fig.axes[0]                                   # numba, forward
    assert "numba" in ax.get_title() and "forward" in ax.get_title()
    assert {"im2col", "im2row", "kn2row", "kn2row-aa", "kn2col"} == set(_bars(ax))
    want = _mean(recs, "conv1", "forward", "pytorch") / \
        _mean(recs, "conv1", "forward", "im2col", "numba")
    assert _bars(ax)["im2col"][0] == pytest.approx(want)
    assert len(fig.axes) == 2                          # no NumPy panel either
    assert "NumPy backend not shown" in fig.get_suptitle()
    assert ax.get_yscale() == "log"
    assert any(line.get_ydata()[0] == 1.0 for line in ax.get_lines())
    assert len(ax.texts) == sum(len(v) for v in _bars(ax).values())   # one label per bar
    assert all(t.get_rotation() == 90 for t in ax.texts)


def test_layers_are_ordered_by_flops_not_by_name(loaded):
    recs, _ = loaded
    big = dict(recs[0], extra=dict(recs[0]["extra"], layer="a-wide", flops=1e12))
    assert plot._layers([big] + recs) == ["conv1", "conv2", "a-wide"]


def test_gflops_shows_numba_and_pytorch_against_the_ceiling(loaded):
    recs, info = loaded
    fig = plot.fig_gflops(recs, info)
    ax = fig.axes[0]
    bars = _bars(ax)
    assert set(bars) == {"im2col", "im2row", "kn2row", "kn2row-aa", "kn2col", "PyTorch"}
    r = next(r for r in recs if r["extra"].get("layer") == "conv1" and r["extra"]["pass"]
             == "forward" and r["extra"].get("algo") == "im2col"
             and r["extra"]["backend"] == "numba")
    assert bars["im2col"][0] == pytest.approx(r["extra"]["flops"] / r["mean"] / 1e9)
    assert any(line.get_ydata()[0] == 96.0 for line in ax.get_lines())
    assert "GFLOP/s" in ax.get_ylabel()


def test_training_shows_every_task_and_accuracy_only_where_recorded(loaded):
    recs, info = loaded
    fig = plot.fig_training(recs, info)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("time per" in t for t in titles) == 3           # iris, mnist, mnist-step
    assert sum("test accuracy" in t for t in titles) == 2      # mnist-step has none
    step = next(ax for ax in fig.axes if ax.get_title().startswith("mnist-step"))
    assert "time per step" in step.get_title()
    heights = [p.get_height() for p in step.patches]
    want = [r["mean"] * 1e3 for r in recs if r["group"] == "mnist-train-step-b64"]
    assert heights == pytest.approx(want)                      # PyTorch first, in ms
    assert [t.get_text() for t in step.get_xticklabels()][0] == "PyTorch"
    assert step.patches[0].get_hatch() == "//"                 # PyTorch highlighted


def test_distributed_shows_time_and_bytes_per_step(loaded):
    recs, info = loaded
    fig = plot.fig_distributed(recs, info)
    dist = [r["extra"] for r in recs if r["group"] == "distributed-step-threads"]
    a1, a2 = fig.axes
    assert [p.get_height() for p in a1.patches] == \
        pytest.approx([e["seconds_per_step"] * 1e3 for e in dist])
    assert [p.get_height() for p in a2.patches] == \
        pytest.approx([e["bytes_per_step"] / 1e6 for e in dist])
    assert "MB" in a2.get_ylabel()
    assert any("1/302 of dense" in t.get_text() for t in a2.texts)


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
    assert "skipped distributed: no records with extra_info strategy and seconds_per_step" \
        in out
    assert "stale" not in out                          # nothing was there to delete
    assert f"wrote {tmp_path / 'figs' / 'speedup.png'}" in out
    assert not (tmp_path / "figs" / "loader.png").exists()
    assert not (tmp_path / "figs" / "speedup.svg").exists()


def test_a_skipped_figure_leaves_no_stale_file(tmp_path, capsys):
    """A figure drawn by an earlier run must not survive a run that cannot draw it."""
    out = tmp_path / "figs"
    assert _cli(["plot", str(FIXTURE), "--out", str(out)]) == 0
    assert (out / "dgc.png").exists() and (out / "dgc.svg").exists()
    doc = json.loads(FIXTURE.read_text())
    doc["benchmarks"] = [b for b in doc["benchmarks"] if "sparsity" not in b["extra_info"]]
    f = _write(tmp_path, doc, "no_dgc.json")
    capsys.readouterr()
    assert _cli(["plot", str(f), "--out", str(out), "--format", "png"]) == 0
    printed = capsys.readouterr().out
    assert "skipped dgc: no records with extra_info strategy and sparsity" in printed
    assert "deleted the stale dgc.png, dgc.svg of an earlier run" in printed
    assert not (out / "dgc.png").exists() and not (out / "dgc.svg").exists()
    assert (out / "distributed.svg").exists()          # drawn figures' files are kept


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
    written, skipped, _ = plot.plot(f, tmp_path / "figs", formats=("png",))
    assert skipped == {} and len(written) == len(plot.FIGURES)
