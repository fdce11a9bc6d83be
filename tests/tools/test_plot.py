"""`minigrad plot`: every figure from the small pytest-benchmark fixture, comparisons of
results files, training curves from logs written here; bad files refused."""
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


def _record(name, group, seconds, **extra):
    """One pytest-benchmark record: `seconds` the median, with a 2% IQR either side."""
    return {"name": name, "group": group, "params": {},
            "stats": {"mean": seconds, "median": seconds, "q1": 0.98 * seconds,
                      "q3": 1.02 * seconds, "min": 0.97 * seconds, "max": 1.03 * seconds,
                      "stddev": 0.01 * seconds, "rounds": 3},
            "extra_info": extra}


# What bench/test_bench_augment.py and bench/test_bench_scaling.py record (the numbers are
# made up, in the shape issue #18 measured on 2 cores).
AUGMENT_RECORDS = [
    *[_record(f"test_loader_throughput[{t}-{w}]", f"loader-{t}", 100 / bps,
              engine="minigrad", transform=t, num_workers=w, batches=100,
              batches_per_second=bps, device="cpu", cores=2)
      for t, rates in (("normalize", (60_000, 26_000, 20_000, 17_000)),
                       ("augment", (300, 450, 520, 500)))
      for w, bps in zip((0, 1, 2, 4), rates, strict=True)],
    *[_record(f"test_training_stall_share[{t}-{w}]", f"loader-stall-{t}", 2.0,
              engine="minigrad", transform=t, num_workers=w, stall_share=share,
              images_per_second=1600.0, n_train=3200, batch_size=64, device="cpu", cores=2)
      for t, shares in (("normalize", (0.01, 0.02, 0.02, 0.03)),
                        ("augment", (0.45, 0.20, 0.12, 0.10)))
      for w, share in zip((0, 1, 2, 4), shares, strict=True)],
]
SCALING_IPS = {"sync": (900.0, 1200.0, 1000.0), "hogwild": (950.0, 1500.0, 1300.0)}
SCALING_TO_TARGET = {"sync": (40.0, 30.0, None), "hogwild": (38.0, 25.0, 33.0)}
SCALING_RECORDS = [
    _record(f"test_scaling[{s}-{w}]", "scaling-threads", 50.0, strategy=s, workers=w,
            comm="threads", cores=2, thread_plan={"workers": w}, task="mnist",
            n_train=12000, images_per_second=ips, time_to_target_s=t,
            epochs_to_target=None if t is None else 2, test_accuracy=0.96,
            target_accuracy=0.95)
    for s in SCALING_IPS
    for w, ips, t in zip((1, 2, 4), SCALING_IPS[s], SCALING_TO_TARGET[s], strict=True)]


@pytest.fixture(scope="module")
def full_file(tmp_path_factory):
    """The small fixture plus the thread-budget benchmarks' records: every figure's data."""
    doc = json.loads(FIXTURE.read_text())
    doc["benchmarks"] += AUGMENT_RECORDS + SCALING_RECORDS
    f = tmp_path_factory.mktemp("full") / "bench_results_small.json"
    f.write_text(json.dumps(doc))
    return f


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, full_file):
    out = tmp_path_factory.mktemp("figures")
    return out, plot.plot(full_file, out)


@pytest.fixture(scope="module")
def loaded(full_file):
    return plot.read(full_file)


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
def test_every_figure_says_what_it_ran_on_and_from_which_commit(loaded, name):
    recs, info = loaded
    fig = plot.DRAW[name](recs, info)
    title = fig.get_suptitle()
    assert "CPU: fixture CPU, 2 logical CPUs" in title
    if name in ("speedup", "gflops", "workspace", "tradeoff"):
        assert "float32" in title
    footer = plot.footer_of(fig)                       # the fixture ran on a dirty tree
    assert "source: bench_results_small.json" in footer and "commit 0000000" in footer
    assert "DIRTY TREE" in footer and "BLAS: OpenBLAS Haswell" in footer


def _time(recs, layer, p, algo, backend=None):
    return next(r["time"] for r in recs if r["extra"].get("layer") == layer
                and r["extra"].get("pass") == p and r["extra"].get("algo") == algo
                and backend in (None, r["extra"].get("backend")))


def _bars(ax):
    from matplotlib.container import BarContainer

    return {c.get_label(): [b.get_height() for b in c] for c in ax.containers
            if isinstance(c, BarContainer)}


def _whiskers(ax):
    """{series: [(low, high)]} of the error bars drawn on a bar chart."""
    from matplotlib.container import BarContainer

    return {c.get_label(): [tuple(seg[:, 1]) for seg in c.errorbar.lines[2][0].get_segments()]
            for c in ax.containers if isinstance(c, BarContainer) and c.errorbar}


def test_speedup_is_pytorch_time_over_numba_time_without_numpy(loaded):
    recs, info = loaded
    assert any(r["extra"].get("backend") == "numpy" for r in recs)
    fig = plot.fig_speedup(recs, info)
    ax = fig.axes[0]                                   # numba, forward
    assert "numba" in ax.get_title() and "forward" in ax.get_title()
    assert {"im2col", "im2row", "kn2row", "kn2row-aa", "kn2col"} == set(_bars(ax))
    want = _time(recs, "conv1", "forward", "pytorch") / \
        _time(recs, "conv1", "forward", "im2col", "numba")
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
    assert bars["im2col"][0] == pytest.approx(r["extra"]["flops"] / r["time"] / 1e9)
    sgemm = next(line for line in ax.get_lines() if line.get_ydata()[0] == 96.0)
    assert sgemm.get_label() == ("NumPy sgemm (OpenBLAS Haswell kernels), measured in the "
                                 "same run: 96 GFLOP/s")
    assert "ceiling" not in fig.get_suptitle() + sgemm.get_label()
    assert "GFLOP/s" in ax.get_ylabel() and "median time" in ax.get_ylabel()


def test_training_shows_every_task_and_accuracy_only_where_recorded(loaded):
    recs, info = loaded
    fig = plot.fig_training(recs, info)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("time per" in t for t in titles) == 3           # iris, mnist, mnist-step
    assert sum("test accuracy" in t for t in titles) == 2      # mnist-step has none
    step = next(ax for ax in fig.axes if ax.get_title().startswith("mnist-step"))
    assert "time per step" in step.get_title()
    heights = [p.get_height() for p in step.patches]
    want = [r["time"] * 1e3 for r in recs if r["group"] == "mnist-train-step-b64"]
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


def _bar_patches(ax):
    from matplotlib.container import BarContainer

    return [b for c in ax.containers if isinstance(c, BarContainer) for b in c]


def _lines(ax):
    """{label: y values} of the lines with a legend label on an axis."""
    return {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()
            if not ln.get_label().startswith("_")}


def _points(ax):
    """{label: (x, y)} of the single-point markers with a legend label on an axis."""
    return {ln.get_label(): (ln.get_xdata()[0], ln.get_ydata()[0]) for ln in ax.get_lines()
            if not ln.get_label().startswith("_") and len(ln.get_xdata()) == 1}


def _conv_record(layer, p, seconds, algo="direct", workspace=0):
    return _record(f"test_conv[{layer}-{p}-{algo}]", f"conv-{layer}-{p}", seconds,
                   engine="minigrad", backend="numba", algo=algo, layer=layer, device="cpu",
                   workspace_bytes=workspace, **{"pass": p})


def test_tradeoff_puts_each_algorithm_at_its_workspace_and_time(loaded):
    recs, info = loaded
    fig = plot.fig_tradeoff(recs, info)
    assert len(fig.axes) == 2                          # one panel per layer, in FLOPs order
    for ax, layer in zip(fig.axes, ("conv1", "conv2"), strict=True):
        assert ax.get_title() == f"{layer}, forward+backward"
        want = {r["extra"]["algo"]: (r["extra"]["workspace_bytes"] / 2**20, r["time"] * 1e3)
                for r in recs if r["extra"].get("layer") == layer
                and r["extra"]["engine"] == "minigrad" and r["extra"]["backend"] == "numba"
                and r["extra"]["pass"] == "forward+backward"}
        points = _points(ax)
        assert set(points) == set(want) == {"im2col", "im2row", "kn2row", "kn2row-aa",
                                            "kn2col"}  # numba only: no NumPy point
        for algo, (x, y) in want.items():
            assert points[algo] == pytest.approx((x, y))
            line = next(ln for ln in ax.get_lines() if ln.get_label() == algo)
            assert line.get_color() == plot._color(algo)
        torch = _time(recs, layer, "forward+backward", "pytorch") * 1e3
        assert _lines(ax)["PyTorch (workspace not reported)"] == pytest.approx([torch] * 2)
        assert f"PyTorch {torch:.3g} ms" in [t.get_text() for t in ax.texts]
        assert set(want) <= {t.get_text() for t in ax.texts}      # every point named
        assert ax.get_xscale() == "log" and "workspace (MiB" in ax.get_xlabel()
        assert ax.get_yscale() == "linear"             # the times differ by under 4x
        assert "median forward+backward time (ms" in ax.get_ylabel()
    title = fig.get_suptitle()
    assert "time vs forward workspace" in title and "NumPy backend not shown" in title


def test_tradeoff_labels_do_not_overlap(loaded):
    recs, info = loaded
    fig = plot.fig_tradeoff(recs, info)
    fig.canvas.draw()
    for ax in fig.axes:
        boxes = [t.get_window_extent() for t in ax.texts]
        assert len(boxes) == 6                         # five algorithms and PyTorch
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[i + 1:])


def test_tradeoff_draws_no_workspace_at_a_labelled_left_edge(tmp_path):
    doc = json.loads(FIXTURE.read_text())
    doc["benchmarks"] += [_conv_record(layer, p, 0.05)   # numba direct: 0 bytes, slow
                          for layer in ("conv1", "conv2")
                          for p in ("forward", "forward+backward")]
    recs, info = plot.read(_write(tmp_path, doc, "direct.json"))
    fig = plot.fig_tradeoff(recs, info)
    ax = fig.axes[0]
    points = _points(ax)
    x, y = points["direct"]
    assert y == pytest.approx(50.0)
    assert x < min(px for a, (px, _) in points.items() if a != "direct")
    assert ax.get_xlim()[0] < x                        # inside the axes, at the left edge
    fig.canvas.draw()
    labels = {t.get_position()[0]: t.get_text() for t in ax.get_xticklabels()}
    assert [t for v, t in labels.items() if v == pytest.approx(x)] == ["0"]   # tick "0"
    assert list(labels.values()).count("0") == 1
    assert "grey strip: 0, none" in ax.get_xlabel()
    assert ax.get_yscale() == "log"                    # 50 ms against 6 ms: over 4x


def test_tradeoff_falls_back_to_forward(loaded):
    recs, info = loaded
    fwd = [r for r in recs if not (r["extra"].get("layer") == "conv2"
                                   and r["extra"].get("pass") == "forward+backward")]
    fig = plot.fig_tradeoff(fwd, info)
    a1, a2 = fig.axes
    assert a1.get_title() == "conv1, forward+backward"
    assert a2.get_title().startswith("conv2, forward\n(no forward+backward records")
    assert _points(a2)["kn2row"][1] == pytest.approx(
        _time(recs, "conv2", "forward", "kn2row", "numba") * 1e3)
    torch = _time(recs, "conv2", "forward", "pytorch") * 1e3
    assert _lines(a2)["PyTorch (workspace not reported)"] == pytest.approx([torch] * 2)
    assert "forward time (ms" in a2.get_ylabel()
    assert "forward+backward/forward" not in fig.get_suptitle()
    assert "median forward/forward+backward time" in fig.get_suptitle()


def test_tradeoff_is_skipped_without_workspace_and_its_old_files_deleted(tmp_path, capsys):
    out = tmp_path / "figs"
    assert _cli(["plot", str(FIXTURE), "--out", str(out)]) == 0
    assert (out / "tradeoff.png").exists() and (out / "tradeoff.svg").exists()
    doc = json.loads(FIXTURE.read_text())
    for b in doc["benchmarks"]:
        b["extra_info"].pop("workspace_bytes", None)
    f = tmp_path / "no_workspace.json"
    f.write_text(json.dumps(doc))
    capsys.readouterr()
    assert _cli(["plot", str(f), "--out", str(out), "--format", "png"]) == 0
    printed = capsys.readouterr().out
    assert ("skipped tradeoff: no minigrad conv records with extra_info workspace_bytes, "
            "layer and pass (forward or forward+backward); deleted the stale tradeoff.png, "
            "tradeoff.svg of an earlier run") in printed
    assert not (out / "tradeoff.png").exists() and not (out / "tradeoff.svg").exists()
    assert (out / "speedup.png").exists()              # drawn figures' files are kept


def test_loader_has_a_line_per_transform_and_a_stall_panel(loaded):
    recs, info = loaded
    fig = plot.fig_loader(recs, info)
    ax, ax2 = fig.axes[:2]
    # errorbar lines carry no label themselves: read the legend and the data lines
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"minigrad DataLoader", "PyTorch DataLoader", "normalize", "augment"} <= set(labels)
    values = [t.get_text() for t in ax.texts]
    assert "60,000" in values and "300" in values   # normalise / augment, main thread
    assert ax.get_yscale() == "log"                 # 60k and 300 batches/s on one axis
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["0 (main thread)", "1"]
    stall = _lines(ax2)
    assert stall["augment"] == pytest.approx([45, 20, 12, 10])   # percent
    assert stall["normalize"] == pytest.approx([1, 2, 2, 3])
    assert "stall" in ax2.get_ylabel()
    assert "(2 cores)" in fig.get_suptitle()


def test_loader_without_stall_records_has_one_panel(loaded):
    recs, info = loaded
    fig = plot.fig_loader([r for r in recs if not r["group"].startswith("loader-stall")], info)
    assert len(fig.axes) == 1


def test_scaling_shows_images_per_second_and_time_to_target(loaded):
    recs, info = loaded
    fig = plot.fig_scaling(recs, info)
    a1, a2 = fig.axes[:2]
    lines = _lines(a1)
    assert lines["sync"] == pytest.approx(SCALING_IPS["sync"])
    assert lines["hogwild"] == pytest.approx(SCALING_IPS["hogwild"])
    assert [t.get_text() for t in a1.get_xticklabels()] == ["1", "2", "4"]
    heights = sorted(b.get_height() for b in _bar_patches(a2))
    assert heights == pytest.approx(sorted([40.0, 30.0, 38.0, 25.0, 33.0]))  # not sync x4
    assert sum(t.get_text() == "not\nreached" for t in a2.texts) == 1
    title = fig.get_suptitle()
    assert "on 2 cores" in title and "95% test accuracy" in title
    assert any("more workers than cores (2)" in t.get_text()
               for t in a1.get_legend().get_texts())


def test_scaling_draws_the_one_core_ceiling(tmp_path):
    ref = _record("test_one_core_reference", "scaling-threads", 50.0, strategy="sync",
                  workers=1, reference="one-core", cores=2, images_per_second=700.0,
                  n_train=12000)
    doc = json.loads(FIXTURE.read_text())
    doc["benchmarks"] = SCALING_RECORDS + [ref]
    f = tmp_path / "scaling.json"
    f.write_text(json.dumps(doc))
    recs, info = plot.read(f)
    fig = plot.fig_scaling(recs, info)
    a1 = fig.axes[0]
    labels = [t.get_text() for t in a1.get_legend().get_texts()]
    assert any(t.startswith("ceiling: 2 x one worker on one core (1,400)") for t in labels)
    assert _lines(a1)["sync"] == pytest.approx(SCALING_IPS["sync"])  # not a sync point


def test_scaling_is_skipped_without_its_group(loaded):
    recs, info = loaded
    why = plot.fig_scaling([r for r in recs if r["group"] != "scaling-threads"], info)
    assert isinstance(why, str) and "scaling-threads" in why


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
    assert "skipped distributed-step: no records with extra_info strategy and " \
        "seconds_per_step" in out
    assert "skipped distributed: no records of group 'scaling-threads'" in out
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
    assert (out / "distributed-step.svg").exists()     # drawn figures' files are kept


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
    assert capsys.readouterr().err == (f"minigrad plot: {tmp_path / 'missing.json'}: no such "
                                       "file; check the path (`pytest bench --benchmark-json="
                                       "FILE` or `minigrad train --log FILE.jsonl` writes "
                                       "one)\n")


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
    doc["benchmarks"] += AUGMENT_RECORDS + SCALING_RECORDS   # the figures that need them
    f = _write(tmp_path, doc, "bench.json")
    recs = plot.load(f)
    assert {r["extra"]["engine"] for r in recs if "layer" in r["extra"]} == \
        {"minigrad", "pytorch"}
    assert {r["extra"]["pass"] for r in recs if "layer" in r["extra"]} == set(plot.PASSES)
    written, skipped, _ = plot.plot(f, tmp_path / "figs", formats=("png",))
    assert skipped == {} and len(written) == len(plot.FIGURES)


# --------------------------------------------------------------------------- dirty trees


def test_dirty_results_warn_and_clean_ones_do_not(tmp_path, capsys):
    assert _cli(["plot", str(FIXTURE), "--out", str(tmp_path / "a"), "--format", "png"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"minigrad plot: warning: {FIXTURE} was measured on a dirty tree "
                          "(uncommitted changes at commit 0000000)")
    doc = json.loads(FIXTURE.read_text())
    doc["commit_info"]["dirty"] = False
    recs, info = plot.read(_write(tmp_path, doc, "clean.json"))
    assert info["dirty"] is False
    assert "DIRTY" not in plot.footer_of(plot.fig_speedup(recs, info))
    assert _cli(["plot", str(tmp_path / "clean.json"), "--out", str(tmp_path / "b"),
                 "--format", "png"]) == 0
    assert "dirty" not in capsys.readouterr().err


def test_median_and_iqr_not_mean(tmp_path):
    """The figures show the median and its IQR: a slow outlier round moves neither."""
    doc = json.loads(FIXTURE.read_text())
    b = next(b for b in doc["benchmarks"] if b["name"] == "test_conv[conv1-forward-im2col]")
    b["stats"].update(mean=0.01, max=0.05, median=0.0024, q1=0.0023, q3=0.0025)
    recs, info = plot.read(_write(tmp_path, doc, "outlier.json"))
    r = next(r for r in recs if r["name"] == b["name"])
    assert (r["time"], r["lo"], r["hi"], r["stat"], r["spread"]) == \
        (0.0024, 0.0023, 0.0025, "median", "IQR")
    ax = plot.fig_speedup(recs, info).axes[0]
    torch = _time(recs, "conv1", "forward", "pytorch")
    assert _bars(ax)["im2col"][0] == pytest.approx(torch / 0.0024)
    lo, hi = _whiskers(ax)["im2col"][0]
    t = next(r for r in recs if r["name"] == "test_conv[conv1-forward-pytorch]")
    assert (lo, hi) == pytest.approx((t["lo"] / 0.0025, t["hi"] / 0.0023))
    assert "median time" in ax.get_ylabel()


# --------------------------------------------------------------------------- comparing runs


def _scaled(tmp_path, name, factor, commit="1111111abc", dirty=False):
    """A copy of the fixture with every time times `factor`, as another run's file."""
    doc = json.loads(FIXTURE.read_text())
    for b in doc["benchmarks"]:
        for k in ("min", "max", "mean", "median", "q1", "q3"):
            b["stats"][k] *= factor
    doc["commit_info"].update(id=commit, dirty=dirty)
    return _write(tmp_path, doc, name)


def test_two_results_files_are_drawn_side_by_side(tmp_path, capsys):
    before = _scaled(tmp_path, "0001_0000000_20240101_000000.json", 1.0, "0000000", True)
    after = _scaled(tmp_path, "0002_1111111_20240102_000000.json", 0.5)
    out = tmp_path / "cmp"
    assert _cli(["plot", str(before), str(after), "--out", str(out), "--format", "png"]) == 0
    doc = json.loads(FIXTURE.read_text())
    groups = {b["group"] for b in doc["benchmarks"]}
    assert {f.name for f in out.iterdir()} == {f"compare-{plot._slug(g)}.png" for g in groups}
    err = capsys.readouterr().err
    assert f"warning: {before} was measured on a dirty tree" in err and str(after) not in err

    runs = [(plot.run_label(p, plot.read(p)[1]),) + plot.read(p) for p in (before, after)]
    assert [r[0] for r in runs] == ["0001 (0000000+dirty)", "0002 (1111111)"]
    fig = plot.fig_compare(runs, "loader")
    ax = fig.axes[0]
    widths = {c.get_label(): [b.get_width() for b in c] for c in ax.containers
              if hasattr(c, "patches")}
    first, second = widths["0001 (0000000+dirty)"], widths["0002 (1111111)"]
    assert len(first) == len(second) == 8 and second == pytest.approx([w / 2 for w in first])
    assert sum("(0.50x)" in t.get_text() for t in ax.texts) == 8
    assert "median time per call" in ax.get_xlabel() and "IQR" in ax.get_xlabel()
    footer = plot.footer_of(fig)
    assert "commit 0000000 · DIRTY TREE" in footer and "commit 1111111" in footer


def test_compare_labels_and_missing_benchmarks(tmp_path):
    a = _scaled(tmp_path, "a.json", 1.0)
    doc = json.loads(_scaled(tmp_path, "b.json", 2.0).read_text())
    doc["benchmarks"] = [b for b in doc["benchmarks"] if b["name"] != "test_loader[minigrad-8]"]
    b = _write(tmp_path, doc, "b.json")
    out = tmp_path / "cmp"
    assert _cli(["plot", str(a), str(b), "--out", str(out), "--format", "svg",
                 "--labels", "laptop,server"]) == 0
    runs = [(lab,) + plot.read(p) for lab, p in (("laptop", a), ("server", b))]
    fig = plot.fig_compare(runs, "loader")
    ax = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["laptop", "server"]
    assert any(t.get_text() == "not in this file" for t in ax.texts)
    assert (out / "compare-loader.svg").is_file()


def test_bench_labels_drop_what_the_group_says():
    r = {"name": "test_conv[mnist-conv2-im2col-numba-forward+backward]",
         "group": "mnist-conv2 forward+backward"}
    assert plot._bench_label(r) == "im2col-numba"
    assert plot._bench_label({"name": "test_torch[mnist-conv2-forward]",
                              "group": "mnist-conv2 forward"}) == "torch"
    assert plot._slug("mnist-conv2 forward+backward") == "mnist-conv2-forward+backward"


# --------------------------------------------------------------------------- training curves


def _log(path, run, losses, test_acc, end=True, cut=False, step_losses=None, extra=()):
    """A `minigrad train --log` file: start, steps, epochs, (end); cut=True adds a
    half-written last line, as a killed run leaves."""
    lines = [{"event": "start", "time": 0.0, "run": run,
              "config": {"task": "mnist", "model": "cnn", "conv": run, "optimizer": "sgd",
                         "lr": 0.02, "batch_size": 64, "epochs": len(losses), "seed": 0}}]
    step = 0
    for e, (loss, acc) in enumerate(zip(losses, test_acc, strict=True), 1):
        for s in step_losses or ():
            step += 1
            lines.append({"event": "step", "epoch": e, "step": step, "loss": s, "lr": 0.02})
        lines.append({"event": "epoch", "epoch": e, "step": step, "loss": loss,
                      "train_accuracy": None, "test_accuracy": acc, "val_accuracy": None,
                      "lr": 0.02, "seconds": float(e), "new_key": "ignored"})
    lines += list(extra)
    if end:
        lines.append({"event": "end", "summary": {"test_accuracy": test_acc[-1]}})
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    if cut:
        text += '{"event": "epoch", "epo'
    path.write_text(text)
    return path


def test_training_curves_overlay_runs_per_epoch(tmp_path, capsys):
    a = _log(tmp_path / "a.jsonl", "im2col", [0.9, 0.5, 0.3], [0.80, 0.90, 0.95],
             step_losses=[2.0, 1.0])
    b = _log(tmp_path / "b.log", "kn2row", [1.0, 0.6], [0.7, 0.85], end=False, cut=True,
             extra=[{"event": "mystery", "x": 1}])
    out = tmp_path / "figs"
    assert _cli(["plot", str(a), str(b), "--out", str(out)]) == 0     # b: by content
    assert {f.name for f in out.iterdir()} == {"curves.png", "curves.svg"}
    runs = [plot.read_log(a), plot.read_log(b)]
    assert runs[1]["truncated"] and not runs[1]["ended"] and runs[0]["ended"]
    fig = plot.fig_curves(runs)
    loss_ax, acc_ax = fig.axes[:2]
    lines = [ln for ln in loss_ax.get_lines() if len(ln.get_xdata()) > 1]
    assert [list(ln.get_xdata()) for ln in lines] == [[1, 2, 3], [1, 2]]
    assert [list(ln.get_ydata()) for ln in lines] == [[0.9, 0.5, 0.3], [1.0, 0.6]]
    acc = [list(ln.get_ydata()) for ln in acc_ax.get_lines()]
    assert acc == [pytest.approx([80, 90, 95]), pytest.approx([70, 85])]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["im2col", "kn2row (incomplete: no end event)"]
    assert "last line cut off (killed run?): b.log" in plot.footer_of(fig)
    assert "epoch" == loss_ax.get_xlabel()


def test_training_curves_per_step_and_same_labels(tmp_path):
    a = _log(tmp_path / "a.jsonl", "run", [0.9, 0.5], [0.8, 0.9], step_losses=[2.0, 1.0])
    b = _log(tmp_path / "b.jsonl", "run", [1.0, 0.6], [0.7, 0.85], step_losses=[3.0, 2.0],
             extra=[{"event": "diverged", "epoch": 2, "loss": float("nan")}])
    b.write_text(b.read_text().replace('"conv": "run"', '"conv": "kn2row"'))
    runs = [plot.read_log(a), plot.read_log(b)]
    fig = plot.fig_curves(runs, per="step")
    loss_ax = fig.axes[0]
    assert list(loss_ax.get_lines()[0].get_xdata()) == [1, 2, 3, 4]
    assert list(loss_ax.get_lines()[0].get_ydata()) == [2.0, 1.0, 2.0, 1.0]
    assert loss_ax.get_xlabel() == "step (global)"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["run (conv=run)", "run (conv=kn2row) (diverged)"]


def test_bad_inputs_are_refused_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "start"}\nnot json\n{"event": "end"}\n')
    assert _cli(["plot", str(bad)]) == 2
    assert capsys.readouterr().err == (f"minigrad plot: {bad}: line 2 is not JSON (Expecting "
                                       "value); give a log written by `minigrad train ... "
                                       "--log FILE.jsonl`\n")
    empty = _log(tmp_path / "e.jsonl", "x", [], [], end=False)   # killed in epoch 1
    assert _cli(["plot", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no epoch events in the logs" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("")
    assert _cli(["plot", str(FIXTURE), "--out", str(afile)]) == 2
    assert capsys.readouterr().err == (f"minigrad plot: --out {afile} is a file, not a "
                                       "directory; give a directory (it is created if "
                                       "missing)\n")
    assert _cli(["plot", str(FIXTURE), "--labels", "a,b"]) == 2
    assert "--labels gives 2 names for 1 files" in capsys.readouterr().err
    assert _cli(["plot", str(FIXTURE), "--format", "jpg"]) == 2
    assert "unknown format jpg" in capsys.readouterr().err
