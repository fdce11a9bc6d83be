"""`minigrad plot`'s "split" figure: memory and bytes per worker against N for data, model
and spatial parallelism (records of group "split-memory", from bench/split_memory.py),
drawn from a small synthetic file; and such a file and a `pytest bench` file sharing an
output directory never delete each other's figures."""
import json

import pytest

from minigrad.tools import plot

MIB = 2.0 ** 20
PARAMS = 1_717_032  # the MNIST CNN's parameter bytes (float32)


def _record(strategy, n, **extra):
    """A split-memory record as bench/split_memory.py writes it (made-up numbers in the
    shape of a real run: model parallel's parameters ~1/N, sync's activations 1/N)."""
    share = PARAMS // n if strategy == "model-parallel" else PARAMS
    act = {"sync": 14e6 / n, "model-parallel": 14e6 / n + 4e6, "tensor-slicing": 16e6 / n}
    moved = {"sync": 2 * (n - 1) / n * PARAMS, "model-parallel": 2.4e6 * (n - 1) / n * 2,
             "tensor-slicing": 0.7e6 * (n - 1)}
    e = {"strategy": strategy, "workers": n, "steps": 4, "batch_size": 64,
         "param_bytes_total": PARAMS, "param_bytes_per_worker": share,
         "optimizer_bytes_per_worker": share, "activation_bytes_per_worker": act[strategy],
         "peak_bytes_per_worker": 40e6 / n, "sent_per_step_per_worker": moved[strategy],
         "moved_per_step_per_worker": moved[strategy],
         "halo_bytes_per_step_per_worker": 0.2e6 * (n - 1)
         if strategy == "tensor-slicing" else 0.0, **extra}
    return {"name": f"split[{strategy}-{n}]", "group": "split-memory", "params": {},
            "stats": {"mean": 0.05, "median": 0.05, "stddev": 0.0, "rounds": 1},
            "extra_info": e}


STRATEGIES = ("sync", "model-parallel", "tensor-slicing")
RECORDS = [_record(s, n) for s in STRATEGIES for n in (1, 2, 3, 4)]


def _file(tmp_path, records=RECORDS, name="split.json"):
    doc = {"machine_info": {"minigrad": {"cpu_model": "fixture CPU", "cpu_count": 2,
                                         "git": {"commit": "abcdef0123", "dirty": False}}},
           "benchmarks": records}
    f = tmp_path / name
    f.write_text(json.dumps(doc))
    return f


@pytest.fixture
def fig(tmp_path):
    recs, info = plot.read(_file(tmp_path))
    return plot.fig_split(recs, info)


def _bars(ax):
    from matplotlib.container import BarContainer

    return [b.get_height() for c in ax.containers if isinstance(c, BarContainer) for b in c]


def _lines(ax):
    return {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()
            if not ln.get_label().startswith("_")}


def test_model_state_bars_are_parameters_and_optimizer_state_per_strategy(fig):
    a1 = fig.axes[0]
    want = []
    for s in STRATEGIES:            # per strategy, per N: parameters then optimizer state
        for n in (1, 2, 3, 4):
            share = (PARAMS // n if s == "model-parallel" else PARAMS) / MIB
            want += [share, share]
    assert _bars(a1) == pytest.approx(want)
    assert [t.get_text() for t in a1.get_xticklabels()] == ["1", "2", "3", "4"]
    assert "parameters + optimizer state" in a1.get_title()


def test_activations_and_bytes_per_step_are_one_line_per_strategy(fig):
    _, a2, a3 = fig.axes[:3]
    acts = _lines(a2)
    assert acts["data parallel (sync)"] == pytest.approx([14e6 / n / MIB for n in (1, 2, 3,
                                                                                   4)])
    assert set(acts) == {"data parallel (sync)", "model parallel (filters)",
                         "tensor slicing (row bands)"}
    assert "traced peak" in a2.get_title()           # the dotted peak lines, unlabelled
    moved = _lines(a3)
    assert moved["model parallel (filters)"][0] == 0  # one worker talks to nobody
    assert moved["data parallel (sync)"][1] == pytest.approx(PARAMS / MIB)  # ring, N = 2
    assert moved["tensor slicing (row bands): halo rows"] == \
        pytest.approx([0.2e6 * (n - 1) / MIB for n in (1, 2, 3, 4)])
    assert "sync" not in " ".join(k for k in moved if "halo" in k)
    title = fig.get_suptitle()
    assert "against N" in title and "global batch 64" in title
    assert "CPU: fixture CPU, 2 logical CPUs" in title
    assert "commit abcdef0" in plot.footer_of(fig)


def test_a_split_file_draws_only_its_figure(tmp_path):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "speedup.png").write_bytes(b"an earlier run's figure")
    written, skipped, removed = plot.plot(_file(tmp_path), out)
    assert written == [out / "split.png", out / "split.svg"]
    assert skipped == {} and removed == {}
    assert (out / "speedup.png").exists()             # another file's figure: left alone
    assert (out / "split.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "split.svg").read_bytes()[:1000]


def test_a_benchmark_file_leaves_the_split_figure_alone(tmp_path):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "split.png").write_bytes(b"drawn from split.json")
    other = [{"name": "test_x", "group": "loader", "params": {},
              "stats": {"mean": 0.1, "median": 0.1},
              "extra_info": {"engine": "minigrad", "num_workers": 0, "batches": 10}}]
    _, skipped, _ = plot.plot(_file(tmp_path, other, "bench.json"), out, formats=("png",))
    assert "split" not in skipped and "speedup" in skipped
    assert (out / "split.png").read_bytes() == b"drawn from split.json"
    mixed = plot.read(_file(tmp_path, other + RECORDS, "mixed.json"))[0]
    assert plot.figures_of(mixed) == [*plot.FIGURES, "split"]


def test_missing_fields_skip_the_figure_and_bad_ones_are_refused(tmp_path):
    recs, info = plot.read(_file(tmp_path))
    for r in recs:
        del r["extra"]["moved_per_step_per_worker"]
    why = plot.fig_split(recs, info)
    assert isinstance(why, str) and "split-memory" in why and "moved_per_step" in why
    bad = [_record("sync", 1, param_bytes_per_worker="big")]
    with pytest.raises(ValueError, match=r"extra_info\['param_bytes_per_worker'\] must be "
                                         "a number"):
        plot.read(_file(tmp_path, bad, "bad.json"))


def test_the_command_line_draws_it(tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser(prog="minigrad")
    plot.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["plot", str(_file(tmp_path)), "--out", str(tmp_path / "o"),
                         "--format", "png"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'o' / 'split.png'}" in out and "skipped" not in out
