"""`minigrad plot results.json --out DIR`: the benchmark figures, from pytest-benchmark JSON.

    pytest bench --benchmark-json=results.json
    minigrad plot results.json --out docs/figures      # PNG + SVG of every figure it can draw

Each benchmark record is {"name", "group", "params", "stats": {"mean", "stddev", ...},
"extra_info": {...}}. The time of a record is stats.mean (seconds); everything else is read
from extra_info, with these keys (the bench suites record them with
`benchmark.extra_info.update(...)`):

  key                 type    meaning                                        used by
  ------------------  ------  ---------------------------------------------  ----------------
  engine              str     "minigrad" or "pytorch"                        all comparisons
                              (conv records without it: "pytorch" if algo or
                              backend is "torch", else "minigrad")
  layer               str     conv layer name, e.g. "conv1", "conv2"         speedup, gflops,
  algo                str     kernels.ALGORITHMS name ("im2col", ...);          workspace
                              for pytorch records anything (ignored)
  backend             str     "numpy" / "numba" / "cupy" (minigrad)          series labels
  device              str     "cpu" / "cuda": PyTorch baselines are per device
  pass                str     "forward" or "forward+backward"                speedup, gflops
                              (also read: key pass_, values "fwd"/"fwdbwd")
  flops               number  floating-point operations of one call          gflops
  gflops              number  flops / mean / 1e9 (used when flops is absent) gflops
  sgemm_gflops        number  measured sgemm GFLOP/s of this machine         gflops (ceiling)
  workspace_bytes     int     kernels.workspace_bytes(algo, ...) (minigrad)  workspace
  num_workers         int     data-loader threads (records of group "loader")  loader
  batches_per_second  number  loader throughput (else extra_info "batches" / mean)  loader
  test_accuracy       number  in [0, 1], a training run's test accuracy      training, dgc
  task                str     "iris" / "mnist" (training; default: the group)  training
  strategy            str     gradient exchange, e.g. "dense", "dgc"         dgc
  sparsity            number  fraction of gradient entries NOT sent, [0, 1)  dgc
  bytes_sent          number  bytes one worker sent in the run               dgc

Figures (each to DIR/NAME.png and DIR/NAME.svg; a figure whose records are absent is skipped
and the reason printed):
  speedup    PyTorch time / minigrad time per algorithm and layer, forward and
             forward+backward (grouped bars, a line at 1.0: above it minigrad is faster)
  gflops     achieved GFLOP/s per algorithm and layer, against the measured sgemm ceiling
  workspace  lowering workspace per algorithm and layer (MiB, log scale)
  loader     loader throughput (batches/s) against num_workers
  training   training time and test accuracy, minigrad vs PyTorch, per task
  dgc        test accuracy and bytes sent against gradient sparsity, per strategy

A malformed file (not JSON, no "benchmarks" list, a record without stats.mean, a non-numeric
number key) raises ValueError naming the file and what is wrong; the command prints it and
exits with status 2.
"""
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

ALGO_ORDER = ("direct", "im2col", "im2row", "kn2row", "kn2row-aa", "kn2col")
PASSES = ("forward", "forward+backward")
NUMERIC_KEYS = ("flops", "gflops", "sgemm_gflops", "workspace_bytes", "num_workers",
                "batches_per_second", "batches", "test_accuracy", "sparsity", "bytes_sent")
FIGURES = ("speedup", "gflops", "workspace", "loader", "training", "dgc")
MIB = 2.0 ** 20


# --------------------------------------------------------------------------- reading


def load(path):
    """The validated records of a pytest-benchmark JSON file: a list of dicts with name,
    group, mean (seconds), stddev and extra (extra_info). Raises ValueError if malformed."""
    path = Path(path)
    try:
        raw = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                         f"{e.colno}); expected pytest --benchmark-json output") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{path}: no \"benchmarks\" list at the top level; expected the "
                         "output of `pytest bench --benchmark-json=FILE`")
    records = []
    for i, b in enumerate(doc["benchmarks"]):
        where = f"{path}: benchmarks[{i}]"
        if not isinstance(b, dict):
            raise ValueError(f"{where} is not an object")
        where += f" ({b.get('name', '?')!r})"
        stats = b.get("stats")
        if not isinstance(stats, dict):
            raise ValueError(f"{where} has no \"stats\" object")
        mean = stats.get("mean")
        if not _number(mean) or not mean > 0:
            raise ValueError(f"{where}: stats.mean must be a positive number of seconds, "
                             f"got {mean!r}")
        extra = b.get("extra_info") or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{where}: extra_info must be an object, got {type(extra).__name__}")
        for k in NUMERIC_KEYS:
            if k in extra and extra[k] is not None and not _number(extra[k]):
                raise ValueError(f"{where}: extra_info[{k!r}] must be a number, "
                                 f"got {extra[k]!r}")
        std = stats.get("stddev")
        records.append(dict(name=str(b.get("name", f"#{i}")), group=b.get("group") or "",
                            mean=float(mean), stddev=float(std) if _number(std) else 0.0,
                            extra=_canonical(extra)))
    return records


PASS_ALIASES = {"fwd": "forward", "forward": "forward", "fwdbwd": "forward+backward",
                "fwd+bwd": "forward+backward", "forward+backward": "forward+backward"}
TORCH_NAMES = ("torch", "pytorch")


def _canonical(e):
    """A copy of extra_info with the documented keys, also accepting the bench suite's
    spellings: pass_ for pass, "fwd"/"fwdbwd" for the passes, and no engine key (then a
    conv record is "pytorch" when its algo or backend is "torch", else "minigrad")."""
    e = dict(e)
    if "pass" not in e and "pass_" in e:
        e["pass"] = e["pass_"]
    if "pass" in e:
        e["pass"] = PASS_ALIASES.get(str(e["pass"]), str(e["pass"]))
    if "engine" not in e and "layer" in e:
        torchy = e.get("algo") in TORCH_NAMES or e.get("backend") in TORCH_NAMES
        e["engine"] = "pytorch" if torchy else "minigrad"
    return e


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- helpers


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_key(e):
    """Bar-series label of a record: the algorithm, or PyTorch (with backend/device when
    several are present the caller adds them)."""
    if e.get("engine") == "pytorch":
        return "PyTorch"
    return str(e.get("algo", "?"))


def _order(names):
    def key(s):
        base = s.split(" ")[0]
        if base == "PyTorch":
            return (len(ALGO_ORDER) + 1, s)
        return (ALGO_ORDER.index(base) if base in ALGO_ORDER else len(ALGO_ORDER), s)
    return sorted(names, key=key)


def _color(series):
    import matplotlib

    base = series.split(" ")[0]
    if base == "PyTorch":
        return "0.25"
    cmap = matplotlib.colormaps["tab10"]
    i = ALGO_ORDER.index(base) if base in ALGO_ORDER else len(ALGO_ORDER) + hash(base) % 3
    return cmap(i)


def _layer_order(layers):
    return sorted(layers, key=lambda s: (len(s), s))


def _bars(ax, groups, series, value, fmt="{:.2f}", log=False):
    """Grouped bars: one group per x label in `groups`, one bar per series; value(g, s) may
    be None (no bar). Values are written on the bars."""
    import numpy as np

    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, s in enumerate(series):
        vals = [value(g, s) for g in groups]
        xs = [x[i] + (k - (len(series) - 1) / 2) * width for i, v in enumerate(vals)
              if v is not None]
        vs = [v for v in vals if v is not None]
        if not vs:
            continue
        bars = ax.bar(xs, vs, width * 0.92, label=s, color=_color(s))
        for b, v in zip(bars, vs):
            ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_xticks(x, groups)
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _suffix(records, key):
    """Distinct values of `key` among records: label series with it only if there are two."""
    return len({r["extra"].get(key) for r in records}) > 1


def _conv(records):
    return [r for r in records if "layer" in r["extra"] and r["extra"].get("engine")]


def _label(r, with_backend, with_device):
    e = r["extra"]
    s = _series_key(e)
    if s != "PyTorch" and with_backend and e.get("backend"):
        s += f" ({e['backend']})"
    if with_device and e.get("device"):
        s += f" [{e['device']}]"
    return s


# --------------------------------------------------------------------------- figures


def fig_speedup(records):
    conv = [r for r in _conv(records) if r["extra"].get("pass") in PASSES]
    mg = [r for r in conv if r["extra"]["engine"] == "minigrad"]
    base = {}
    for r in conv:
        if r["extra"]["engine"] == "pytorch":
            e = r["extra"]
            k = (e["layer"], e["pass"], e.get("device", "cpu"))
            base[k] = min(base.get(k, math.inf), r["mean"])
    pairs = [r for r in mg if (r["extra"]["layer"], r["extra"]["pass"],
                               r["extra"].get("device", "cpu")) in base]
    if not pairs:
        return ("no conv records with both engine 'minigrad' and 'pytorch' for the same "
                "layer and pass (extra_info layer, algo, pass, engine)")
    wb, wd = _suffix(pairs, "backend"), _suffix(pairs, "device")
    speed = {}
    for r in pairs:
        e = r["extra"]
        speed[(e["pass"], e["layer"], _label(r, wb, wd))] = \
            base[(e["layer"], e["pass"], e.get("device", "cpu"))] / r["mean"]
    passes = [p for p in PASSES if any(k[0] == p for k in speed)]
    plt = _plt()
    fig, axes = plt.subplots(1, len(passes), figsize=(6.5 * len(passes), 4.8), squeeze=False)
    for ax, p in zip(axes[0], passes):
        layers = _layer_order({k[1] for k in speed if k[0] == p})
        series = _order({k[2] for k in speed if k[0] == p})
        vals = [v for k, v in speed.items() if k[0] == p]
        log = max(vals) / min(vals) > 20               # e.g. the NumPy references next to Numba
        _bars(ax, layers, series, lambda g, s, p=p: speed.get((p, g, s)), fmt="{:.2g}x",
              log=log)
        ax.axhline(1.0, color="black", lw=1, ls="--", label="PyTorch (1.0)")
        top = max(1.0, max(vals))
        if log:                                        # room for the legend above the bars
            ax.set_ylim(min(vals) / 2, top * 30)
        else:
            ax.set_ylim(0, top * 1.4)
        ax.set_title(f"{p}")
        ax.set_xlabel("layer")
        ax.set_ylabel("speedup over PyTorch (PyTorch time / minigrad time)"
                      + (", log scale" if log else ""))
        ax.legend(fontsize=8, ncols=3, loc="upper center")
    fig.suptitle("Convolution speed relative to PyTorch (higher is better; > 1: minigrad "
                 "faster)", fontsize=12)
    fig.tight_layout()
    return fig


def fig_gflops(records):
    rows = []
    for r in _conv(records):
        e = r["extra"]
        g = e["flops"] / r["mean"] / 1e9 if _number(e.get("flops")) else e.get("gflops")
        if _number(g) and e.get("pass") in PASSES:
            rows.append((r, g))
    if not rows:
        return "no conv records with extra_info flops (or gflops), layer, pass and engine"
    wb = _suffix([r for r, _ in rows], "backend")
    wd = _suffix([r for r, _ in rows], "device")
    val = {(r["extra"]["pass"], r["extra"]["layer"], _label(r, wb, wd)): g for r, g in rows}
    ceil = sorted(r["extra"]["sgemm_gflops"] for r in records
                  if _number(r["extra"].get("sgemm_gflops")))
    passes = [p for p in PASSES if any(k[0] == p for k in val)]
    plt = _plt()
    fig, axes = plt.subplots(1, len(passes), figsize=(6.5 * len(passes), 4.8), squeeze=False)
    for ax, p in zip(axes[0], passes):
        layers = _layer_order({k[1] for k in val if k[0] == p})
        series = _order({k[2] for k in val if k[0] == p})
        _bars(ax, layers, series, lambda g, s, p=p: val.get((p, g, s)), fmt="{:.1f}")
        top = max(v for k, v in val.items() if k[0] == p)
        if ceil:
            c = ceil[len(ceil) // 2]
            ax.axhline(c, color="crimson", lw=1.5, ls="--",
                       label=f"measured sgemm ceiling ({c:.1f} GFLOP/s)")
            top = max(top, c)
        ax.set_ylim(0, top * 1.45)                     # room for the legend above the line
        ax.set_title(p)
        ax.set_xlabel("layer")
        ax.set_ylabel("achieved GFLOP/s (useful conv flops / time)")
        ax.legend(fontsize=8, ncols=3, loc="upper center")
    note = "" if ceil else " (no sgemm_gflops recorded: no ceiling line)"
    fig.suptitle(f"Convolution throughput against the machine's GEMM ceiling{note}",
                 fontsize=12)
    fig.tight_layout()
    return fig


def fig_workspace(records):
    val = {}
    for r in _conv(records):
        e = r["extra"]
        if e["engine"] == "minigrad" and _number(e.get("workspace_bytes")):
            k = (e["layer"], str(e.get("algo", "?")))
            val[k] = max(val.get(k, 0), e["workspace_bytes"] / MIB)
    if not val:
        return "no minigrad conv records with extra_info workspace_bytes and layer"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    layers = _layer_order({k[0] for k in val})
    series = _order({k[1] for k in val})
    # log scale: a zero (direct) cannot be drawn, it is written in the legend instead
    zero = [s for s in series if all(val.get((g, s), 0) == 0 for g in layers)]
    shown = [s for s in series if s not in zero]
    _bars(ax, layers, shown, lambda g, s: val.get((g, s)) or None, fmt="{:.3g}", log=True)
    for s in zero:
        ax.bar([], [], color=_color(s), label=f"{s}: 0 MiB (no lowering buffer)")
    ax.set_xlabel("layer")
    ax.set_ylabel("forward workspace (MiB, log scale)")
    ax.set_title("Lowering workspace per algorithm (kernels.workspace_bytes, float32)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_loader(records):
    pts = defaultdict(list)
    for r in records:
        e = r["extra"]
        if r["group"] != "loader" or not _number(e.get("num_workers")):
            continue
        bps = e.get("batches_per_second")
        if not _number(bps) and _number(e.get("batches")):
            bps = e["batches"] / r["mean"]
        if _number(bps):
            pts[str(e.get("engine", "minigrad"))].append((e["num_workers"], bps))
    if not pts:
        return ("no records of group 'loader' with extra_info num_workers and "
                "batches_per_second (or batches)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    ticks = set()
    for eng, p in sorted(pts.items()):
        p.sort()
        ax.plot([a for a, _ in p], [b for _, b in p], marker="o",
                label="PyTorch DataLoader" if eng == "pytorch" else f"{eng} DataLoader",
                color="0.25" if eng == "pytorch" else "tab:blue")
        ticks.update(a for a, _ in p)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(int(t)) for t in sorted(ticks)])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("num_workers (loader threads)")
    ax.set_ylabel("throughput (batches/s)")
    ax.set_title("Data-loader throughput against the number of workers")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def fig_training(records):
    runs = [r for r in records if _number(r["extra"].get("test_accuracy"))
            and "strategy" not in r["extra"]]
    if not runs:
        return "no training records with extra_info test_accuracy (iris / MNIST groups)"
    by_task = defaultdict(list)
    for r in runs:
        by_task[str(r["extra"].get("task") or r["group"] or "?")].append(r)
    tasks = sorted(by_task)
    plt = _plt()
    fig, axes = plt.subplots(2, len(tasks), figsize=(max(5.0, 4.2 * len(tasks)), 7.5),
                             squeeze=False)
    for col, t in enumerate(tasks):
        rs = sorted(by_task[t], key=lambda r: (r["extra"].get("engine") == "pytorch",
                                               str(r["extra"].get("algo", ""))))
        names = []
        for r in rs:
            e = r["extra"]
            n = "PyTorch" if e.get("engine") == "pytorch" else "minigrad"
            if e.get("engine") != "pytorch" and e.get("algo") not in (None, "-"):
                n += f"\n{e['algo']}"
            names.append(n)
        colors = ["0.25" if n == "PyTorch" else _color(n.split("\n")[-1]) if "\n" in n
                  else "tab:blue" for n in names]
        ax = axes[0][col]
        ax.bar(names, [r["mean"] for r in rs], yerr=[r["stddev"] for r in rs], color=colors,
               capsize=3)
        for i, r in enumerate(rs):                     # inside the bar, clear of the error bar
            ax.text(i, r["mean"] / 2, f"{r['mean']:.3g} s", ha="center", va="center",
                    fontsize=8, color="white", weight="bold")
        ax.set_title(f"{t}: training time")
        ax.set_ylabel("time per run (s, mean of rounds)")
        ax.grid(axis="y", alpha=0.3)
        ax = axes[1][col]
        acc = [100 * r["extra"]["test_accuracy"] for r in rs]
        ax.bar(names, acc, color=colors)
        for i, a in enumerate(acc):
            ax.annotate(f"{a:.1f}%", (i, a), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_ylim(0, 105)
        ax.set_title(f"{t}: test accuracy")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        for a in axes[:, col]:
            a.tick_params(axis="x", labelsize=8)
    fig.suptitle("Training: minigrad vs PyTorch (same weights, same batches)", fontsize=12)
    fig.tight_layout()
    return fig


def fig_dgc(records):
    pts = defaultdict(list)
    for r in records:
        e = r["extra"]
        if "strategy" in e and _number(e.get("sparsity")) and 0 <= e["sparsity"] < 1:
            pts[str(e["strategy"])].append((e["sparsity"], e.get("test_accuracy"),
                                            e.get("bytes_sent")))
    if not pts:
        return "no records with extra_info strategy and sparsity (gradient compression)"
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for k, (s, p) in enumerate(sorted(pts.items())):
        p.sort()
        color = plt.get_cmap("tab10")(k)
        acc = [(x, 100 * a) for x, a, _ in p if _number(a)]
        sent = [(x, b / MIB) for x, _, b in p if _number(b)]
        if acc:
            a1.plot([1 - x for x, _ in acc], [a for _, a in acc], marker="o", label=s,
                    color=color)
        if sent:
            a2.plot([1 - x for x, _ in sent], [b for _, b in sent], marker="o", label=s,
                    color=color)
    # sparsities like 0.9, 0.99, 0.999 crowd at 1 on a linear axis: plot the fraction SENT,
    # 1 - sparsity, on a log axis running right to left, and tick it with the sparsity
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    sps = sorted({x for p in pts.values() for x, _, _ in p})
    for a in (a1, a2):
        a.set_xscale("log")
        a.xaxis.set_major_locator(FixedLocator([1 - x for x in sps]))
        a.xaxis.set_minor_locator(NullLocator())
        a.set_xticklabels([f"{x:g}" for x in sps])
        a.invert_xaxis()
        a.set_xlabel("gradient sparsity (fraction of entries not sent; log scale of 1 - s)")
    a1.set_ylabel("test accuracy (%)")
    a1.set_title("Accuracy against sparsity")
    a2.set_ylabel("bytes sent per worker (MiB, log scale)")
    a2.set_yscale("log")
    a2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a2.set_title("Communication against sparsity")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(title="strategy")
    fig.suptitle("Deep Gradient Compression: accuracy and bytes against sparsity",
                 fontsize=12)
    fig.tight_layout()
    return fig


DRAW = {"speedup": fig_speedup, "gflops": fig_gflops, "workspace": fig_workspace,
        "loader": fig_loader, "training": fig_training, "dgc": fig_dgc}


def plot(path, out_dir, formats=("png", "svg")):
    """Draw every figure the records of `path` allow into `out_dir`.

    Returns (written, skipped): the files written, and {figure: why it was skipped}.
    """
    records = load(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    written, skipped = [], {}
    for name in FIGURES:
        fig = DRAW[name](records)
        if isinstance(fig, str):
            skipped[name] = fig
            continue
        for fmt in formats:
            f = out_dir / f"{name}.{fmt}"
            fig.savefig(f, dpi=150 if fmt == "png" else None)
            written.append(f)
        plt.close(fig)
    return written, skipped


# --------------------------------------------------------------------------- command line


def run(args):
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        written, skipped = plot(args.results, args.out, formats)
    except ValueError as e:
        print(f"minigrad plot: {e}", file=sys.stderr)
        return 2
    for f in written:
        print(f"wrote {f}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    return 0


def add_parser(subparsers):
    """Register `minigrad plot` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "plot", help="draw the benchmark figures from pytest-benchmark JSON",
        description="Draw speedup, GFLOP/s, workspace, loader, training and DGC figures from "
                    "`pytest bench --benchmark-json=FILE` output (see minigrad/plot.py for "
                    "the extra_info keys).")
    p.add_argument("results", help="pytest-benchmark JSON file")
    p.add_argument("--out", default="figures", metavar="DIR",
                   help="directory for the figures (default: figures)")
    p.add_argument("--format", default="png,svg", help="comma-separated (default png,svg)")
    p.set_defaults(func=run)
    return p


if __name__ == "__main__":
    import argparse

    _p = argparse.ArgumentParser(prog="minigrad")
    add_parser(_p.add_subparsers(dest="command", required=True))
    _a = _p.parse_args()
    sys.exit(_a.func(_a))
