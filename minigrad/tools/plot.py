"""`minigrad plot results.json --out DIR`: the benchmark figures, from pytest-benchmark JSON.

    pytest bench --benchmark-json=results.json
    minigrad plot results.json --out docs/figures      # PNG + SVG of every figure it can draw

Each benchmark record is {"name", "group", "params", "stats": {"mean", "stddev", ...},
"extra_info": {...}}. The time of a record is stats.mean (seconds); everything else is read
from extra_info, with these keys (the bench suites record them with
`benchmark.extra_info.update(...)`):

  key                   type    meaning                                      used by
  --------------------  ------  -------------------------------------------  --------------
  engine                str     "minigrad" or "pytorch"                      all comparisons
                                (conv records without it: "pytorch" if algo or
                                backend is "torch", else "minigrad")
  layer                 str     conv layer name, e.g. "mnist-conv1"          speedup, gflops,
  algo                  str     kernels.ALGORITHMS name ("im2col", ...);        workspace,
                                for pytorch records anything (ignored)       training
  backend               str     "numpy" / "numba" / "cupy" (minigrad)        speedup, gflops
  device                str     "cpu" / "cuda": PyTorch baselines are per device
  dtype                 str     e.g. "float32" (conv titles; default float32, the conv
                                bench suite's dtype)
  pass                  str     "forward" or "forward+backward"              speedup, gflops
                                (also read: key pass_, values "fwd"/"fwdbwd")
  flops                 number  floating-point operations of one call        gflops, layer order
  gflops                number  flops / mean / 1e9 (used when flops is absent)  gflops
  sgemm_gflops          number  measured sgemm GFLOP/s of this machine       gflops (ceiling)
  workspace_bytes       int     kernels.workspace_bytes(algo, ...) (minigrad)  workspace
  num_workers           int     data-loader threads (records of group "loader")  loader
  batches_per_second    number  loader throughput (else extra_info "batches" / mean)  loader
  test_accuracy         number  in [0, 1], a training run's test accuracy    training, dgc
  task                  str     "iris" / "mnist-step" / ... (default: the group)  training
  epochs, batch_size    int     shown in the training panel titles           training
  strategy              str     gradient exchange: "sync", "hogwild", "async", "dgc", ...
                                                                             dgc, distributed
  sparsity              number  fraction of gradient entries NOT sent, [0, 1)  dgc
  bytes_sent            number  bytes one worker sent in the run             dgc
  workers, steps        int     distributed run size (tick labels)           distributed
  seconds_per_step      number  training seconds / steps                     distributed
  bytes_per_step        number  bytes sent per step, summed over workers     distributed
  compression_ratio     number  dense bytes / bytes sent (DGC)               distributed

A training record is one with test_accuracy or task and none of layer, strategy or
num_workers. The figure titles say what is compared and on what: dtype (conv figures),
device, and the CPU from the file's machine_info (cpu.brand_raw, cpu.count), with the
commit from commit_info.

Figures (each to DIR/NAME.png and DIR/NAME.svg):
  speedup      PyTorch time / minigrad time per algorithm and layer, forward and
               forward+backward, one panel row per fast backend (numba; cupy against
               PyTorch on its device when present). The NumPy backend is a readable
               reference, not a speed contender: it is left out (the title says so) unless
               it is the only backend. Log scale, a line at 1.0: above it minigrad is faster.
  gflops       achieved GFLOP/s per algorithm and layer for the same backends, with PyTorch,
               against the measured sgemm ceiling (CPU panels)
  workspace    lowering workspace per algorithm and layer (MiB, log scale)
  loader       loader throughput (batches/s) against num_workers
  training     time per run / per step and (where recorded) test accuracy, minigrad per
               algorithm vs PyTorch, one column per task
  dgc          test accuracy and bytes sent against gradient sparsity, per strategy
  distributed  seconds per step and MB sent per step per strategy (group
               "distributed-step-threads": extra_info strategy, seconds_per_step,
               bytes_per_step)
Layers are ordered by their FLOPs (smallest first), then by first appearance in the file.

A figure whose records are absent is skipped and the reason printed. Its files from an
earlier run in DIR (NAME.png, NAME.svg, NAME.pdf and NAME.<each requested format>) would then
be stale and look current, so they are deleted, and the printed line says which were.

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
                "batches_per_second", "batches", "test_accuracy", "sparsity", "bytes_sent",
                "workers", "steps", "seconds_per_step", "bytes_per_step",
                "compression_ratio")
FIGURES = ("speedup", "gflops", "workspace", "loader", "training", "dgc", "distributed")
FAST_BACKENDS = ("numba", "cupy")      # the speed contenders; numpy is the reference
STALE_FORMATS = ("png", "svg", "pdf")  # deleted for a skipped figure, with the requested ones
STRATEGY_ORDER = ("sync", "hogwild", "async", "dgc")
PYTORCH_COLOR = "0.2"
MIB = 2.0 ** 20


# --------------------------------------------------------------------------- reading


def load(path):
    """The validated records of a pytest-benchmark JSON file: a list of dicts with name,
    group, mean (seconds), stddev and extra (extra_info). Raises ValueError if malformed."""
    return read(path)[0]


def read(path):
    """(records, info): load()'s records and what the file says about the run: info is
    {"machine": "AMD EPYC, 2 logical CPUs" or "", "commit": short commit id or ""}."""
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
    return records, _info(doc)


def _info(doc):
    """The machine and commit of a run, from pytest-benchmark's machine_info/commit_info
    (either may be missing or partial: then that part is "")."""
    mi = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    cpu = mi.get("cpu") if isinstance(mi.get("cpu"), dict) else {}
    brand = str(cpu.get("brand_raw") or mi.get("processor") or "").strip()
    count = cpu.get("count")
    machine = ", ".join(p for p in (brand, f"{count} logical CPUs" if _number(count) else "")
                        if p)
    ci = doc.get("commit_info") if isinstance(doc.get("commit_info"), dict) else {}
    commit = str(ci.get("id") or "")[:7]
    if commit and ci.get("dirty"):
        commit += "+dirty"
    return {"machine": machine, "commit": commit}


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


def _algo_key(a):
    return (ALGO_ORDER.index(a) if a in ALGO_ORDER else len(ALGO_ORDER), a)


def _color(series):
    """PyTorch dark grey; a minigrad algorithm its tab10 colour (the same in every figure)."""
    import matplotlib

    base = series.split(" ")[0]
    if base == "PyTorch":
        return PYTORCH_COLOR
    cmap = matplotlib.colormaps["tab10"]
    i = ALGO_ORDER.index(base) if base in ALGO_ORDER else 6 + sum(map(ord, base)) % 3
    return cmap(i)


def _conv(records):
    return [r for r in records if "layer" in r["extra"] and r["extra"].get("engine")]


def _layers(records, present=None):
    """Conv layer names ordered by FLOPs (smallest first: mnist-conv1, mnist-conv2, wide),
    then by first appearance; only those in `present` if given."""
    first, flops = {}, {}
    for i, r in enumerate(_conv(records)):
        e = r["extra"]
        first.setdefault(e["layer"], i)
        if _number(e.get("flops")):
            flops[e["layer"]] = min(flops.get(e["layer"], math.inf), e["flops"])
    names = [n for n in first if present is None or n in present]
    names += sorted(set(present or ()) - set(names))
    return sorted(names, key=lambda n: (flops.get(n, math.inf), first.get(n, math.inf)))


def _backend(e):
    return str(e.get("backend") or "minigrad")


def _shown_backends(mg):
    """(shown, omitted): the fast minigrad backends to draw (numba, cupy) and the others
    (numpy); all of them when none is fast."""
    present = sorted({_backend(r["extra"]) for r in mg})
    shown = [b for b in FAST_BACKENDS if b in present] or present
    return shown, [b for b in present if b not in shown]


def _device(e):
    return str(e.get("device") or "cpu").lower()


def _context(info, records, dtype=False):
    """What the records ran on, for a title line: "float32 · CPU: AMD EPYC, 2 logical CPUs
    · commit e39d8dd"."""
    info = info or {}
    parts = []
    if dtype:
        parts.append("/".join(sorted({str(r["extra"].get("dtype") or "float32")
                                      for r in records}) or ["float32"]))
    devices = sorted({_device(r["extra"]) for r in records}) or ["cpu"]
    for d in devices:
        if d == "cpu":
            parts.append(f"CPU: {info['machine']}" if info.get("machine") else "CPU")
        else:
            parts.append(d.upper())
    if info.get("commit"):
        parts.append(f"commit {info['commit']}")
    return " · ".join(parts)


def _title(fig, what, context, note=""):
    lines = [what] + [s for s in (note, context) if s]
    fig.suptitle("\n".join(lines), fontsize=11)


def _bars(ax, groups, series, value, fmt="{:.2f}", log=False, rotate=False, fontsize=7,
          style=None):
    """Grouped bars: one group per x label in `groups`, one bar per series; value(g, s) may
    be None (no bar). Values are written above the bars with fmt (a format string or a
    function of the value), turned upright with rotate=True so that narrow bars' labels
    cannot overlap. style(s) may return extra bar kwargs."""
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
        kw = dict(color=_color(s))
        kw.update(style(s) if style else {})
        bars = ax.bar(xs, vs, width * 0.9, label=s, **kw)
        for b, v in zip(bars, vs):
            text = fmt(v) if callable(fmt) else fmt.format(v)
            ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=fontsize, xytext=(0, 2),
                        textcoords="offset points", rotation=90 if rotate else 0,
                        bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none",
                                  alpha=0.75))
    ax.set_xticks(x, groups)
    if log:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _gflops_label(v):
    """Whole numbers from 100 up (1310, not 1.31e+03), else 3 significant digits."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _legend_below(fig, ax, ncols=None):
    """One legend for the figure, under the panels (constrained layout makes room)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols or len(labels),
               fontsize=8, frameon=False)


# --------------------------------------------------------------------------- figures


def _conv_panels(records):
    """The conv records split for speedup/gflops: (minigrad records of the shown backends,
    PyTorch records, shown backends, omitted backends)."""
    conv = [r for r in _conv(records) if r["extra"].get("pass") in PASSES]
    mg = [r for r in conv if r["extra"]["engine"] == "minigrad"]
    torch = [r for r in conv if r["extra"]["engine"] == "pytorch"]
    shown, omitted = _shown_backends(mg)
    return [r for r in mg if _backend(r["extra"]) in shown], torch, shown, omitted


def _omitted_note(omitted):
    if not omitted:
        return ""
    names = ", ".join("NumPy" if b == "numpy" else b for b in omitted)
    return (f"one bar per algorithm; {names} backend not shown (a readable reference, "
            "not a speed contender)")


def fig_speedup(records, info=None):
    mg, torch, shown, omitted = _conv_panels(records)
    base = {}
    for r in torch:
        e = r["extra"]
        k = (e["layer"], e["pass"], _device(e))
        base[k] = min(base.get(k, math.inf), r["mean"])
    speed, devices = {}, {}
    for r in mg:
        e = r["extra"]
        k = (e["layer"], e["pass"], _device(e))
        if k in base:
            speed[(_backend(e), e["pass"], e["layer"], str(e.get("algo", "?")))] = \
                base[k] / r["mean"]
            devices.setdefault(_backend(e), set()).add(_device(e))
    if not speed:
        return ("no conv records with both engine 'minigrad' and 'pytorch' for the same "
                "layer, pass and device (extra_info layer, algo, pass, engine)")
    rows = [b for b in shown if b in devices]
    passes = [p for p in PASSES if any(k[1] == p for k in speed)]
    vals = list(speed.values())
    lo = 10 ** math.floor(math.log10(min(vals) * 0.9))
    top = max(1.0, max(vals))
    hi = 10 ** (math.log10(top) + 0.25 * (math.log10(top) - math.log10(lo)) + 0.05)
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(passes), squeeze=False, layout="constrained",
                             figsize=(6.2 * len(passes), 3.9 * len(rows) + 1.4))
    for i, b in enumerate(rows):
        for ax, p in zip(axes[i], passes):
            keys = [k for k in speed if k[0] == b and k[1] == p]
            layers = _layers(records, {k[2] for k in keys})
            algos = sorted({k[3] for k in keys}, key=_algo_key)
            _bars(ax, layers, algos, lambda g, s, b=b, p=p: speed.get((b, p, g, s)),
                  fmt="{:.2g}x", log=True, rotate=True)
            ax.axhline(1.0, color="black", lw=1.2, ls="--",
                       label="PyTorch = 1 (above: minigrad faster)")
            ax.set_ylim(lo, hi)
            dev = "/".join(sorted(devices[b]))
            ax.set_title(f"{b} backend vs PyTorch ({dev}), {p}", fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylabel("speedup (PyTorch time / minigrad time)")
    _legend_below(fig, axes[0][0])
    _title(fig, "Convolution speedup over PyTorch per algorithm (log scale; higher is "
                "better, > 1: minigrad faster)", _context(info, mg + torch, dtype=True),
           _omitted_note(omitted))
    return fig


def fig_gflops(records, info=None):
    mg, torch, shown, omitted = _conv_panels(records)
    val, devices = {}, {}
    for r in mg + torch:
        e = r["extra"]
        g = e["flops"] / r["mean"] / 1e9 if _number(e.get("flops")) else e.get("gflops")
        if not _number(g):
            continue
        if e["engine"] == "pytorch":
            for b in shown:                            # PyTorch on the backend's device
                val[(b, e["pass"], e["layer"], "PyTorch", _device(e))] = g
        else:
            val[(_backend(e), e["pass"], e["layer"], str(e.get("algo", "?")), _device(e))] = g
            devices.setdefault(_backend(e), set()).add(_device(e))
    if not devices:
        return "no conv records with extra_info flops (or gflops), layer, pass and engine"
    ceil = sorted(r["extra"]["sgemm_gflops"] for r in records
                  if _number(r["extra"].get("sgemm_gflops")))
    c = ceil[len(ceil) // 2] if ceil else None
    rows = [b for b in shown if b in devices]
    passes = [p for p in PASSES if any(k[1] == p for k in val)]
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(passes), squeeze=False, layout="constrained",
                             figsize=(6.2 * len(passes), 3.9 * len(rows) + 1.4))
    for i, b in enumerate(rows):
        devs = devices[b]
        top = max([v for k, v in val.items() if k[0] == b and k[4] in devs]
                  + ([c] if c and "cpu" in devs else []))
        for ax, p in zip(axes[i], passes):
            keys = [k for k in val if k[0] == b and k[1] == p and k[4] in devs]
            panel = {(k[2], k[3]): val[k] for k in keys}
            layers = _layers(records, {k[0] for k in panel})
            series = sorted({k[1] for k in panel if k[1] != "PyTorch"}, key=_algo_key)
            series += ["PyTorch"] if any(k[1] == "PyTorch" for k in panel) else []
            _bars(ax, layers, series, lambda g, s, panel=panel: panel.get((g, s)),
                  fmt=_gflops_label, rotate=True,
                  style=lambda s: dict(hatch="//", edgecolor="white") if s == "PyTorch"
                  else {})
            if c and "cpu" in devs:
                ax.axhline(c, color="crimson", lw=1.5, ls="--",
                           label=f"measured sgemm ceiling, {c:.0f} GFLOP/s (NumPy BLAS)")
            ax.set_ylim(0, top * 1.22)                 # room for the upright labels
            dev = "/".join(sorted(devs))
            ax.set_title(f"{b} backend and PyTorch ({dev}), {p}", fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylabel("GFLOP/s (useful conv FLOPs / time)")
    handles = {}
    for ax in axes.flat:                               # every series and the ceiling once
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center",
               ncols=min(len(handles), 8), fontsize=8, frameon=False)
    note = _omitted_note(omitted)
    if not c:
        note = "; ".join(s for s in (note, "no sgemm_gflops recorded: no ceiling line") if s)
    _title(fig, "Convolution throughput (GFLOP/s) per algorithm, minigrad and PyTorch, "
                "against the measured sgemm ceiling",
           _context(info, mg + torch, dtype=True), note)
    return fig


def fig_workspace(records, info=None):
    val, used = {}, []
    for r in _conv(records):
        e = r["extra"]
        if e["engine"] == "minigrad" and _number(e.get("workspace_bytes")):
            k = (e["layer"], str(e.get("algo", "?")))
            val[k] = max(val.get(k, 0), e["workspace_bytes"] / MIB)
            used.append(r)
    if not val:
        return "no minigrad conv records with extra_info workspace_bytes and layer"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5.2), layout="constrained")
    layers = _layers(records, {k[0] for k in val})
    series = sorted({k[1] for k in val}, key=_algo_key)
    # log scale: a zero (direct) cannot be drawn, it is written in the legend instead
    zero = [s for s in series if all(val.get((g, s), 0) == 0 for g in layers)]
    shown = [s for s in series if s not in zero]
    _bars(ax, layers, shown, lambda g, s: val.get((g, s)) or None, fmt="{:.3g}", log=True)
    for s in zero:
        ax.bar([], [], color=_color(s), label=f"{s}: 0 MiB (no lowering buffer)")
    ax.set_xlabel("layer")
    ax.set_ylabel("forward workspace (MiB, log scale)")
    ax.legend(fontsize=8)
    _title(fig, "Lowering workspace per algorithm and layer (kernels.workspace_bytes, MiB)",
           _context(info, used, dtype=True))
    return fig


def fig_loader(records, info=None):
    pts, used = defaultdict(list), []
    for r in records:
        e = r["extra"]
        if r["group"] != "loader" or not _number(e.get("num_workers")):
            continue
        bps = e.get("batches_per_second")
        if not _number(bps) and _number(e.get("batches")):
            bps = e["batches"] / r["mean"]
        if _number(bps):
            pts[str(e.get("engine", "minigrad"))].append((e["num_workers"], bps))
            used.append(r)
    if not pts:
        return ("no records of group 'loader' with extra_info num_workers and "
                "batches_per_second (or batches)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    # evenly spaced worker counts (0 = in the calling thread cannot go on a log axis)
    ticks = sorted({w for p in pts.values() for w, _ in p})
    at = {w: i for i, w in enumerate(ticks)}
    for eng, p in sorted(pts.items()):
        p.sort()
        ax.plot([at[a] for a, _ in p], [b for _, b in p], marker="o",
                label="PyTorch DataLoader" if eng == "pytorch" else f"{eng} DataLoader",
                color=PYTORCH_COLOR if eng == "pytorch" else "tab:blue")
        for a, b in p:
            ax.annotate(f"{b:,.0f}", (at[a], b), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 4), textcoords="offset points")
    ax.set_xticks(range(len(ticks)), [f"{int(t)}" + (" (main thread)" if t == 0 else "")
                                      for t in ticks])
    ax.set_ylim(0, max(b for p in pts.values() for _, b in p) * 1.15)
    ax.set_xlabel("num_workers (loader threads)")
    ax.set_ylabel("throughput (batches/s)")
    ax.grid(alpha=0.3)
    ax.legend()
    _title(fig, "Data-loader throughput against the number of worker threads",
           _context(info, used))
    return fig


def _is_training(r):
    e = r["extra"]
    if any(k in e for k in ("layer", "strategy", "num_workers")) or r["group"] == "loader":
        return False
    return _number(e.get("test_accuracy")) or bool(e.get("task"))


def fig_training(records, info=None):
    runs = [r for r in records if _is_training(r)]
    if not runs:
        return ("no training records (extra_info test_accuracy or task, without layer, "
                "strategy or num_workers)")
    by_task = {}
    for r in runs:
        by_task.setdefault(str(r["extra"].get("task") or r["group"] or "?"), []).append(r)
    tasks = list(by_task)
    sizes = [max(3, len(by_task[t])) for t in tasks]
    plt = _plt()
    fig = plt.figure(figsize=(max(6.0, sum(0.95 * n + 1.3 for n in sizes)), 8.2),
                     layout="constrained")
    grid = fig.add_gridspec(2, len(tasks), width_ratios=sizes)
    for col, t in enumerate(tasks):
        rs = sorted(by_task[t], key=lambda r: (r["extra"].get("engine") != "pytorch",
                                               _algo_key(str(r["extra"].get("algo", "")))))
        names, colors = [], []
        for r in rs:
            e = r["extra"]
            if e.get("engine") == "pytorch":
                names.append("PyTorch")
                colors.append(PYTORCH_COLOR)
            elif e.get("algo") not in (None, "", "-"):
                names.append(f"minigrad\n{e['algo']}")
                colors.append(_color(str(e["algo"])))
            else:
                names.append(str(e.get("engine") or "minigrad"))
                colors.append("tab:blue")
        has_acc = [_number(r["extra"].get("test_accuracy")) for r in rs]
        ax = fig.add_subplot(grid[0, col] if any(has_acc) else grid[:, col])
        per = "step" if "step" in f"{t} {rs[0]['group']}" else "run"
        scale, unit = (1e3, "ms") if max(r["mean"] for r in rs) < 1 else (1.0, "s")
        times = [r["mean"] * scale for r in rs]
        bars = ax.bar(names, times, yerr=[r["stddev"] * scale for r in rs], color=colors,
                      capsize=3, error_kw=dict(lw=1))
        pt = next((v for v, n in zip(times, names) if n == "PyTorch"), None)
        if pt is not None:
            bars[names.index("PyTorch")].set(edgecolor="black", lw=1.5, hatch="//")
            ax.axhline(pt, color=PYTORCH_COLOR, ls="--", lw=1, zorder=0)
        for i, (r, v) in enumerate(zip(rs, times)):
            label = f"{v:.3g} {unit}"
            if pt is not None and names[i] != "PyTorch":
                label += f"\n{v / pt:.2g}x PyTorch"
            ax.annotate(label, (i, v + r["stddev"] * scale), ha="center", va="bottom",
                        fontsize=7.5, xytext=(0, 2), textcoords="offset points")
        ax.set_ylim(0, max(v + r["stddev"] * scale for r, v in zip(rs, times)) * 1.3)
        e0 = rs[0]["extra"]
        detail = ", ".join(s for s in (
            f"{e0['epochs']} epoch{'s' * (e0['epochs'] != 1)}" if _number(e0.get("epochs"))
            else "",
            f"batch {e0['batch_size']}" if _number(e0.get("batch_size")) else "") if s)
        group = rs[0]["group"]
        head = t + (f" [{group}]" if group and group != t else "")
        ax.set_title(f"{head}\ntime per {per}" + (f" ({detail})" if detail else ""),
                     fontsize=10)
        ax.set_ylabel(f"time per {per} ({unit}, mean ± sd)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.tick_params(axis="x", labelsize=8)
        if not any(has_acc):
            continue
        ax = fig.add_subplot(grid[1, col])
        for i, (r, ok) in enumerate(zip(rs, has_acc)):
            if not ok:
                ax.annotate("not\nrecorded", (i, 0), ha="center", va="bottom", fontsize=7)
                continue
            a = 100 * r["extra"]["test_accuracy"]
            ax.bar(i, a, color=colors[i], **(dict(edgecolor="black", lw=1.5, hatch="//")
                                               if names[i] == "PyTorch" else {}))
            ax.annotate(f"{a:.1f}%", (i, a), ha="center", va="bottom", fontsize=7.5,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylim(0, 108)
        ax.set_title("test accuracy", fontsize=10)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.tick_params(axis="x", labelsize=8)
    _title(fig, "Training: minigrad (per conv algorithm) vs PyTorch (hatched, dashed line); "
                "lower time is better", _context(info, runs))
    return fig


def fig_dgc(records, info=None):
    pts, used = defaultdict(list), []
    for r in records:
        e = r["extra"]
        if "strategy" in e and _number(e.get("sparsity")) and 0 <= e["sparsity"] < 1:
            pts[str(e["strategy"])].append((e["sparsity"], e.get("test_accuracy"),
                                            e.get("bytes_sent")))
            used.append(r)
    if not pts:
        return "no records with extra_info strategy and sparsity (gradient compression)"
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
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
    a1.set_title("Accuracy against sparsity", fontsize=10)
    a2.set_ylabel("bytes sent per worker (MiB, log scale)")
    a2.set_yscale("log")
    a2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a2.set_title("Communication against sparsity", fontsize=10)
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(title="strategy")
    _title(fig, "Deep Gradient Compression: test accuracy and bytes sent against sparsity, "
                "per strategy", _context(info, used))
    return fig


def fig_distributed(records, info=None):
    rs = [r for r in records if "strategy" in r["extra"]
          and (_number(r["extra"].get("seconds_per_step"))
               or _number(r["extra"].get("bytes_per_step")))]
    if not rs:
        return ("no records with extra_info strategy and seconds_per_step or bytes_per_step "
                "(group 'distributed-step-threads')")
    rs.sort(key=lambda r: (_number(r["extra"].get("workers")) and r["extra"]["workers"] > 1,
                           STRATEGY_ORDER.index(r["extra"]["strategy"])
                           if r["extra"]["strategy"] in STRATEGY_ORDER else len(STRATEGY_ORDER)))
    import matplotlib

    cmap = matplotlib.colormaps["Set2"]
    names, colors = [], []
    for r in rs:
        e = r["extra"]
        s = str(e["strategy"])
        w = e.get("workers")
        n = s + (f" x{int(w)}" if _number(w) else "")
        if _number(e.get("steps")):
            n += f"\n{int(e['steps'])} steps"
        names.append(n)
        single = _number(w) and w <= 1
        i = STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else 4 + sum(map(ord, s)) % 4
        colors.append("0.7" if single else cmap(i))
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(9.0, 2.1 * len(rs) + 2), 4.9),
                                 layout="constrained")
    sec = [r["extra"].get("seconds_per_step") for r in rs]
    mb = [r["extra"].get("bytes_per_step") for r in rs]
    for ax, vals, scale, unit in ((a1, sec, 1e3, "ms"), (a2, mb, 1e-6, "MB")):
        xs = [i for i, v in enumerate(vals) if _number(v)]
        vs = [vals[i] * scale for i in xs]
        ax.bar(xs, vs, color=[colors[i] for i in xs], edgecolor="0.3", lw=0.6)
        for i, v in zip(xs, vs):
            label = f"{v:.3g} {unit}"
            cr = rs[i]["extra"].get("compression_ratio")
            if unit == "MB" and _number(cr) and cr > 1:
                label += f"\n(1/{cr:.0f} of dense)"
            if unit == "MB" and v == 0:
                label = "0 MB\n(shared memory)" if rs[i]["extra"]["strategy"] == "hogwild" \
                    else "0 MB"
            ax.annotate(label, (i, v), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(rs)), names, fontsize=8)
        ax.set_ylim(0, max(vs, default=1) * 1.25 or 1)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_xlabel("strategy x workers (steps as each strategy counts them)")
    a1.set_ylabel("seconds per step (ms; training seconds / steps)")
    a1.set_title("Time per step (lower is better)", fontsize=10)
    a2.set_ylabel("MB sent per step (all workers, 1 MB = 1e6 bytes)")
    a2.set_title("Communication per step (lower is better)", fontsize=10)
    groups = sorted({r["group"] for r in rs if r["group"]})
    _title(fig, "Distributed training per strategy: time and bytes sent per step"
                + (f" [{', '.join(groups)}]" if groups else ""), _context(info, rs),
           "grey: one worker (the baseline)" if "0.7" in colors else "")
    return fig


DRAW = {"speedup": fig_speedup, "gflops": fig_gflops, "workspace": fig_workspace,
        "loader": fig_loader, "training": fig_training, "dgc": fig_dgc,
        "distributed": fig_distributed}


def plot(path, out_dir, formats=("png", "svg")):
    """Draw every figure the records of `path` allow into `out_dir`.

    Returns (written, skipped, removed): the files written, {figure: why it was skipped},
    and {figure: [stale files of that skipped figure, from an earlier run, deleted]}.
    """
    records, info = read(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    written, skipped, removed = [], {}, {}
    for name in FIGURES:
        fig = DRAW[name](records, info)
        if isinstance(fig, str):
            skipped[name] = fig
            stale = [out_dir / f"{name}.{fmt}" for fmt in dict.fromkeys(STALE_FORMATS + formats)]
            stale = [f for f in stale if f.is_file()]
            for f in stale:
                f.unlink()
            if stale:
                removed[name] = stale
            continue
        for fmt in formats:
            f = out_dir / f"{name}.{fmt}"
            fig.savefig(f, dpi=150 if fmt == "png" else None)
            written.append(f)
        plt.close(fig)
    return written, skipped, removed


# --------------------------------------------------------------------------- command line


def run(args):
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        written, skipped, removed = plot(args.results, args.out, formats)
    except ValueError as e:
        print(f"minigrad plot: {e}", file=sys.stderr)
        return 2
    for f in written:
        print(f"wrote {f}")
    for name, why in skipped.items():
        gone = removed.get(name)
        note = (f"; deleted the stale {', '.join(f.name for f in gone)} of an earlier run"
                if gone else "")
        print(f"skipped {name}: {why}{note}")
    return 0


def add_parser(subparsers):
    """Register `minigrad plot` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "plot", help="draw the benchmark figures from pytest-benchmark JSON",
        description="Draw speedup, GFLOP/s, workspace, loader, training, DGC and "
                    "distributed figures from "
                    "`pytest bench --benchmark-json=FILE` output (see minigrad/tools/plot.py for "
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
