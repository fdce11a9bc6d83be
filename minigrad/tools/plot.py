"""`minigrad plot FILE... --out DIR`: figures from benchmark results and training logs.

    pytest bench --benchmark-json=results.json
    minigrad plot results.json --out docs/figures        # every figure the file allows
    minigrad plot before.json after.json --out cmp       # the two runs side by side
    minigrad plot .benchmarks/*/0001_*.json .benchmarks/*/0002_*.json --out cmp
    minigrad plot im2col.jsonl kn2row.jsonl --out curves # training curves, overlaid

What a file is decides what is drawn (by its content; a `.jsonl` name means a training log):

  one pytest-benchmark JSON     the figures below, each to DIR/NAME.png and DIR/NAME.svg
  two or more of them           DIR/compare-GROUP.png per benchmark group: each file's
                                median time per benchmark side by side, with its IQR, and
                                each later file's time as a ratio to the first file's
  training logs (*.jsonl)       DIR/curves.png: loss and accuracy against epoch (or
                                --per step), one colour per run

Every figure states its statistic on the axis (the median of the rounds; whiskers the
interquartile range q1-q3, or min-max where a file has no quartiles) and carries a footer
with the source file, commit and machine. Results measured on a dirty tree (uncommitted
changes) say so in the footer, and the command prints a warning: such figures cannot be
redrawn from any commit.

Benchmark records
-----------------
Each record is {"name", "group", "params", "stats": {"median", "q1", "q3", "mean", ...},
"extra_info": {...}}; pytest-benchmark's machine_info (with bench/conftest.py's "minigrad"
section: BLAS kernels, GEMM, threads, git state) and commit_info describe the run. The time
of a record is stats.median (stats.mean where a file has no median); everything else is read
from extra_info, with these keys (the bench suites record them with
`benchmark.extra_info.update(...)`):

  key                   type    meaning                                      used by
  --------------------  ------  -------------------------------------------  --------------
  engine                str     "minigrad" or "pytorch"                      all comparisons
                                (conv records without it: "pytorch" if algo or
                                backend is "torch", else "minigrad")
  layer                 str     conv layer name, e.g. "mnist-conv1"          speedup, gflops,
  algo                  str     kernels.ALGORITHMS name ("im2col", ...);        workspace,
                                for pytorch records anything (ignored)       tradeoff, training
  backend               str     "numpy" / "numba" / "cupy" (minigrad)        speedup, gflops,
                                                                             tradeoff
  device                str     "cpu" / "cuda": PyTorch baselines are per device
  dtype                 str     e.g. "float32" (conv titles; default float32)
  pass                  str     "forward" or "forward+backward"              speedup, gflops,
                                                                             tradeoff
                                (also read: key pass_, values "fwd"/"fwdbwd")
  flops                 number  floating-point operations of one call        gflops, layer order
  gflops                number  flops / time / 1e9 (used when flops is absent)  gflops
  sgemm_gflops          number  NumPy's sgemm GFLOP/s, same run (a yardstick)  gflops
  workspace_bytes       int     kernels.workspace_bytes(algo, ...) (minigrad)  workspace,
                                                                             tradeoff
  num_workers           int     data-loader threads (groups "loader",            loader
                                "loader-normalize", "loader-augment", "loader-stall-*")
  transform             str     the loader's batch transform, one series each  loader
                                ("normalize", "augment"; groups "loader-*")
  stall_share           number  training time blocked on the loader / training  loader
                                time, in [0, 1] (groups "loader-stall-*")
  batches               int     batches per round (throughput = batches / time)  loader
  batches_per_second    number  loader throughput, used when batches is absent  loader
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
  images_per_second     number  training images per second, all workers      scaling
  time_to_target_s      number  training seconds until the test accuracy     scaling
                                first reached target_accuracy (null: never)
  target_accuracy       number  the accuracy aimed at, in [0, 1]             scaling
  cores                 int     the machine's cores (affinity mask)          loader, scaling
  param_bytes_per_worker      number  parameters one worker holds          split
  optimizer_bytes_per_worker  number  its optimizer's state arrays          split
  activation_bytes_per_worker number  what its forward keeps for backward   split
  peak_bytes_per_worker   number  tracemalloc's peak / workers (optional)    split
  moved_per_step_per_worker   number  bytes a worker receives (and sends)   split
                                  over the network per step
  sent_per_step_per_worker    number  bytes it hands to the communicator    (split table)
  halo_bytes_per_step_per_worker  number  tensor slicing's halo rows and    split
                                  their gradients, part of moved

A training record is one with test_accuracy or task and none of layer, strategy or
num_workers. Titles say what is compared and on what: dtype (conv figures), device, and the
CPU from the file's machine_info.

Figures of one results file:
  speedup      PyTorch time / minigrad time per algorithm and layer, forward and
               forward+backward, one panel row per fast backend (numba; cupy against
               PyTorch on its device when present). The NumPy backend is a readable
               reference, not a speed contender: it is left out (the title says so) unless
               it is the only backend. Log scale, a line at 1.0: above it minigrad is faster.
  gflops       achieved GFLOP/s per algorithm and layer for the same backends, with PyTorch,
               and NumPy's sgemm measured in the same run as a yardstick line (labelled with
               its BLAS kernels; minigrad's own GEMM can beat it, so it is no ceiling)
  workspace    lowering workspace per algorithm and layer (MiB, log scale)
  tradeoff     time against workspace, one panel per layer: each algorithm one point at its
               forward workspace (MiB, log scale; a 0, e.g. direct, in a grey strip at the
               left edge, tick "0") and its forward+backward time (ms; forward where a layer
               has no forward+backward records; log scale when the slowest is over 4x the
               fastest), for the same backends as speedup (NumPy left out), and PyTorch's time
               as a dashed line (PyTorch has no workspace figure). Lower left is better
  loader       loader throughput (batches/s) against num_workers, one line per engine
               (group "loader") or per transform (groups "loader-normalize",
               "loader-augment"); with groups "loader-stall-*", a second panel: the share
               of training time stalled waiting for batches (stall_share) per transform
  training     time per run / per step and (where recorded) test accuracy, minigrad per
               algorithm vs PyTorch, one column per task
  dgc          test accuracy and bytes sent against gradient sparsity, per strategy
  distributed  how training scales with workers, per epoch (bench/test_bench_scaling.py):
               images/s against workers per strategy, and training seconds to the target
               accuracy (group "scaling-threads": extra_info strategy, workers,
               images_per_second, time_to_target_s, cores); the title gives the cores. A
               record with reference "one-core" (one worker on one core) draws the ceiling
               cores x its images/s: what N workers could reach with no loss at all
  distributed-step  seconds per step and MB sent per step per strategy (group
               "distributed-step-threads": extra_info strategy, seconds_per_step,
               bytes_per_step); per step, so strategies whose steps hold different numbers
               of images do not compare: "distributed" is the fair one
  split        per worker against the number of workers, one colour per strategy (data
               parallel "sync", "model-parallel", "tensor-slicing"): the model state
               (parameters and optimizer state, stacked bars), the activations (and the
               traced peak, dotted), and the bytes moved per step (tensor slicing's halo
               part dotted). Group "split-memory", written by `bench/split_memory.py`:
               extra_info strategy, workers and the *_per_worker keys above
Layers are ordered by their FLOPs (smallest first), then by first appearance in the file.

Figures from a results file of their own (SCRIPT_FIGURES: "split", from group
"split-memory"). A bench script, not `pytest bench`, writes their records, into a file that
holds nothing else, and their figures usually share DIR with the others (docs/figures). So
a file with only such records draws only their figures, and a file without them leaves
their figures in DIR alone: neither kind of file deletes the other's figures as stale.

A figure whose records are absent is skipped and the reason printed. Its files from an
earlier run in DIR (NAME.png, NAME.svg, NAME.pdf and NAME.<each requested format>) would then
be stale and look current, so they are deleted, and the printed line says which were.

Training logs
-------------
`minigrad train ... --log FILE.jsonl` writes one JSON object per line with an "event" key:
"start" (run label, config), "step" (epoch, step, running loss), "epoch" (epoch, step, loss,
train/test/val accuracy, seconds, ...), "diverged", "end". Unknown keys and events are
ignored; a log without "end" or with a cut-off last line (a killed run) is drawn as far as it
goes, and its legend entry says so.

Errors (a missing file, a file that is not JSON, a record without stats.mean, a
non-numeric number key, ...) raise ValueError naming the file, what is wrong and what to do;
the command prints `minigrad plot: <that>` and exits with status 2.
"""
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

ALGO_ORDER = ("direct", "im2col", "im2row", "kn2row", "kn2row-aa", "kn2col")
PASSES = ("forward", "forward+backward")
NUMERIC_KEYS = ("flops", "gflops", "sgemm_gflops", "workspace_bytes", "num_workers",
                "batches_per_second", "batches", "test_accuracy", "sparsity", "bytes_sent",
                "workers", "steps", "seconds_per_step", "bytes_per_step",
                "compression_ratio", "stall_share", "images_per_second", "time_to_target_s",
                "cores", "target_accuracy", "param_bytes_per_worker",
                "optimizer_bytes_per_worker", "activation_bytes_per_worker",
                "peak_bytes_per_worker", "moved_per_step_per_worker",
                "sent_per_step_per_worker", "halo_bytes_per_step_per_worker")
FIGURES = ("speedup", "gflops", "workspace", "tradeoff", "loader", "training", "dgc",
           "distributed", "distributed-step")
SCRIPT_FIGURES = {"split": "split-memory"}  # figure: the group of its own results file
FAST_BACKENDS = ("numba", "cupy")      # the speed contenders; numpy is the reference
STALE_FORMATS = ("png", "svg", "pdf")  # deleted for a skipped figure, with the requested ones
STRATEGY_ORDER = ("sync", "hogwild", "async", "dgc", "model-parallel", "tensor-slicing")
PYTORCH_COLOR = "0.2"
MIB = 2.0 ** 20


# --------------------------------------------------------------------------- reading


def load(path):
    """The validated records of a pytest-benchmark JSON file: a list of dicts with name,
    fullname, group, time (seconds: the median, else the mean), stat ("median" / "mean"),
    lo and hi (the spread: q1 and q3, else min and max, else the time), spread ("IQR",
    "min-max" or ""), mean, stddev and extra (extra_info). Raises ValueError if malformed."""
    return read(path)[0]


def _read_text(path, what, how):
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; check the path ({how})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory; give a {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise ValueError(f"{path}: cannot read the file ({why}); give a readable {what} "
                         "file") from None


def read(path):
    """(records, info): load()'s records and what the file says about the run (see _info)."""
    path = Path(path)
    raw = _read_text(path, "pytest-benchmark JSON", "`pytest bench --benchmark-json=FILE` "
                     "writes one")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                         f"{e.colno}); give the output of `pytest bench "
                         "--benchmark-json=FILE`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ValueError(f"{path}: no \"benchmarks\" list at the top level; give the output "
                         "of `pytest bench --benchmark-json=FILE`")
    records = []
    for i, b in enumerate(doc["benchmarks"]):
        where = f"{path}: benchmarks[{i}]"
        if not isinstance(b, dict):
            raise ValueError(f"{where} is not an object; the file is not pytest-benchmark "
                             "output")
        where += f" ({b.get('name', '?')!r})"
        stats = b.get("stats")
        if not isinstance(stats, dict):
            raise ValueError(f"{where} has no \"stats\" object; the file is not "
                             "pytest-benchmark output")
        mean = stats.get("mean")
        if not _number(mean) or not mean > 0:
            raise ValueError(f"{where}: stats.mean must be a positive number of seconds, "
                             f"got {mean!r}; the file is damaged, rerun the benchmark")
        extra = b.get("extra_info") or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{where}: extra_info must be an object, got "
                             f"{type(extra).__name__}; fix the bench suite that wrote it")
        for k in NUMERIC_KEYS:
            if k in extra and extra[k] is not None and not _number(extra[k]):
                raise ValueError(f"{where}: extra_info[{k!r}] must be a number, "
                                 f"got {extra[k]!r}; fix the bench suite that wrote it")
        std = stats.get("stddev")
        r = dict(name=str(b.get("name", f"#{i}")), group=b.get("group") or "",
                 mean=float(mean), stddev=float(std) if _number(std) else 0.0,
                 extra=_canonical(extra))
        r["fullname"] = str(b.get("fullname") or r["name"])
        r.update(_statistic(stats))
        records.append(r)
    return records, _info(doc, path)


def _statistic(stats):
    """The time a figure shows and its spread, from pytest-benchmark's stats: the median with
    its interquartile range where recorded (always, in pytest-benchmark's files)."""
    median = stats.get("median")
    if _number(median) and median > 0:
        t, stat = float(median), "median"
    else:
        t, stat = float(stats["mean"]), "mean"
    for lo_key, hi_key, name in (("q1", "q3", "IQR"), ("min", "max", "min-max")):
        lo, hi = stats.get(lo_key), stats.get(hi_key)
        if _number(lo) and _number(hi) and 0 < lo <= t <= hi:
            return dict(time=t, stat=stat, lo=float(lo), hi=float(hi), spread=name)
    return dict(time=t, stat=stat, lo=t, hi=t, spread="")


def _info(doc, path=None):
    """What a results file says about its run, from pytest-benchmark's machine_info (with
    bench/conftest.py's "minigrad" section) and commit_info; any part may be missing:

    machine  "AMD EPYC, 2 logical CPUs" or ""      commit  short commit id or ""
    dirty    True / False / None (not recorded)    blas    "OpenBLAS SkylakeX" or ""
    cpu      the CPU model or ""                   source  the file's name
    """
    mi = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    ours = mi.get("minigrad") if isinstance(mi.get("minigrad"), dict) else {}
    cpu = mi.get("cpu") if isinstance(mi.get("cpu"), dict) else {}
    brand = str(cpu.get("brand_raw") or ours.get("cpu_model") or mi.get("processor")
                or "").strip()
    count = cpu.get("count") or ours.get("cpu_count")
    machine = ", ".join(p for p in (brand, f"{count} logical CPUs" if _number(count) else "")
                        if p)
    ci = doc.get("commit_info") if isinstance(doc.get("commit_info"), dict) else {}
    git = ours.get("git") if isinstance(ours.get("git"), dict) else {}
    commit = str(ci.get("id") or git.get("commit") or "")
    commit = "" if commit in ("unversioned", "unknown") else commit[:7]
    dirty = ci.get("dirty") if isinstance(ci.get("dirty"), bool) else git.get("dirty")
    blas = ""
    libs = [b for b in ours.get("blas") or () if isinstance(b, dict)]
    libs.sort(key=lambda b: not b.get("numpy"))          # NumPy's own BLAS first
    if libs:
        lib = str(libs[0].get("library") or "BLAS")
        lib = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(lib, lib)
        blas = f"{lib} {libs[0].get('kernel') or ''}".strip()
    return {"machine": machine, "cpu": brand, "commit": commit,
            "dirty": dirty if isinstance(dirty, bool) else None, "blas": blas,
            "source": Path(path).name if path else ""}


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
    """What the records ran on, for a title line: "float32 · CPU: AMD EPYC, 2 logical
    CPUs". The commit goes in the footer (see _footer)."""
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
    return " · ".join(parts)


FOOTER_GID = "minigrad-footer"
BOTTOM_LEGEND_GID = "minigrad-bottom-legend"
DIRTY = "DIRTY TREE: measured with uncommitted changes, not reproducible from the commit"


def footer_text(info):
    """The footer line: source file, commit (and the dirty-tree warning), machine."""
    info = info or {}
    parts = [f"source: {info['source']}" if info.get("source") else ""]
    if info.get("commit"):
        parts.append(f"commit {info['commit']}")
    else:
        parts.append("commit not recorded")
    if info.get("dirty"):
        parts.append(DIRTY)
    if info.get("blas"):
        parts.append(f"BLAS: {info['blas']}")
    return " · ".join(p for p in parts if p) + " · drawn by minigrad plot"


def _footer(fig, info, text=None):
    """Write the footer at the bottom edge (in red when the results came from a dirty tree),
    put the bottom legend (if any) just above it, and keep the panels clear of both."""
    import textwrap

    info = info or {}
    width_chars = int(fig.get_figwidth() * 72 / (8 * 0.56))     # 8 pt characters per line
    text = "\n".join(textwrap.wrap(text or footer_text(info), width_chars))
    lines = text.count("\n") + 1
    band = (0.08 + 0.15 * lines) / fig.get_figheight()            # inches -> figure fraction
    fig.text(0.005, 0.006, text, fontsize=8, ha="left", va="bottom", linespacing=1.25,
             color="crimson" if info.get("dirty") else "0.35", gid=FOOTER_GID)
    bottom = band
    legends = [leg for leg in fig.legends if leg.get_gid() == BOTTOM_LEGEND_GID]
    if legends:
        renderer = fig.canvas.get_renderer()
        for leg in legends:
            leg.set_bbox_to_anchor((0.5, band), transform=fig.transFigure)
            bottom = max(bottom, band + leg.get_window_extent(renderer).height
                         / fig.bbox.height + 0.01)
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set"):
        try:
            engine.set(rect=(0, bottom, 1, 1 - bottom))
        except TypeError:                                        # no rect: nothing to do
            pass


def footer_of(fig):
    """The footer text of a figure drawn here ("" if none)."""
    return next((t.get_text() for t in fig.texts if t.get_gid() == FOOTER_GID), "")


def _title(fig, what, context, note="", info=None):
    lines = [what] + [s for s in (note, context) if s]
    fig.suptitle("\n".join(lines), fontsize=11)
    _footer(fig, info)


def _time_label(records, unit, what="time"):
    """Axis label naming the statistic and the whiskers, e.g. "median time (ms); whiskers:
    IQR (q1-q3)"."""
    stats = sorted({r["stat"] for r in records}) or ["median"]
    spreads = sorted({r["spread"] for r in records if r["spread"]})
    whisk = {"IQR": "IQR (q1-q3)", "min-max": "min-max"}
    label = f"{'/'.join(stats)} {what} ({unit})"
    if spreads:
        label += "; whiskers: " + " or ".join(whisk[s] for s in spreads)
    return label


def _bars(ax, groups, series, value, fmt="{:.2f}", log=False, rotate=False, fontsize=7,
          style=None, spread=None):
    """Grouped bars: one group per x label in `groups`, one bar per series; value(g, s) may
    be None (no bar). Values are written above the bars with fmt (a format string or a
    function of the value), turned upright with rotate=True so that narrow bars' labels
    cannot overlap. style(s) may return extra bar kwargs. spread(g, s) may return (lo, hi),
    drawn as a whisker."""
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
        tops = list(vs)
        if spread is not None:
            lohi = [spread(g, s) for g, v in zip(groups, vals, strict=True) if v is not None]
            lohi = [(v, v) if e is None else e for v, e in zip(vs, lohi, strict=True)]
            kw["yerr"] = [[max(v - lo, 0) for v, (lo, _) in zip(vs, lohi, strict=True)],
                          [max(hi - v, 0) for v, (_, hi) in zip(vs, lohi, strict=True)]]
            kw["error_kw"] = dict(lw=0.8, capsize=2, ecolor="0.15")
            tops = [max(v, hi) for v, (_, hi) in zip(vs, lohi, strict=True)]
        bars = ax.bar(xs, vs, width * 0.9, label=s, **kw)
        for b, v, top in zip(bars, vs, tops, strict=True):
            text = fmt(v) if callable(fmt) else fmt.format(v)
            ax.annotate(text, (b.get_x() + b.get_width() / 2, top),
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
    """One legend for the figure, under the panels."""
    handles, labels = ax.get_legend_handles_labels()
    _bottom_legend(fig, handles, labels, ncols=ncols or len(labels), fontsize=8)


def _bottom_legend(fig, handles, labels, **kw):
    """A figure legend under the panels and above the footer; _footer makes room for both
    (constrained layout's own "outside lower" legends would sit on the footer)."""
    leg = fig.legend(list(handles), list(labels), loc="lower center",
                     bbox_to_anchor=(0.5, 0), frameon=False, **kw)
    leg.set_gid(BOTTOM_LEGEND_GID)
    return leg


# --------------------------------------------------------------------------- figures


def _conv_panels(records):
    """The conv records split for speedup/gflops: (minigrad records of the shown backends,
    PyTorch records, shown backends, omitted backends)."""
    conv = [r for r in _conv(records) if r["extra"].get("pass") in PASSES]
    mg = [r for r in conv if r["extra"]["engine"] == "minigrad"]
    torch = [r for r in conv if r["extra"]["engine"] == "pytorch"]
    shown, omitted = _shown_backends(mg)
    return [r for r in mg if _backend(r["extra"]) in shown], torch, shown, omitted


def _omitted_note(omitted, what="one bar per algorithm"):
    if not omitted:
        return ""
    names = ", ".join("NumPy" if b == "numpy" else b for b in omitted)
    return (f"{what}; {names} backend not shown (a readable reference, "
            "not a speed contender)")


def _stat_words(records):
    """ "median" (or "mean" for files without medians) and the whisker description."""
    stat = "/".join(sorted({r["stat"] for r in records})) or "median"
    spreads = sorted({r["spread"] for r in records if r["spread"]})
    whisk = " or ".join({"IQR": "the IQR (q1-q3)", "min-max": "min-max"}[x] for x in spreads)
    return stat, whisk


def fig_speedup(records, info=None):
    mg, torch, shown, omitted = _conv_panels(records)
    base = {}
    for r in torch:
        e = r["extra"]
        k = (e["layer"], e["pass"], _device(e))
        if k not in base or r["time"] < base[k]["time"]:
            base[k] = r
    speed, spread, devices = {}, {}, {}
    for r in mg:
        e = r["extra"]
        k = (e["layer"], e["pass"], _device(e))
        if k in base:
            t = base[k]
            key = (_backend(e), e["pass"], e["layer"], str(e.get("algo", "?")))
            speed[key] = t["time"] / r["time"]
            # the ratio's range when both times move within their spreads
            spread[key] = (t["lo"] / r["hi"], t["hi"] / r["lo"])
            devices.setdefault(_backend(e), set()).add(_device(e))
    if not speed:
        return ("no conv records with both engine 'minigrad' and 'pytorch' for the same "
                "layer, pass and device (extra_info layer, algo, pass, engine)")
    rows = [b for b in shown if b in devices]
    passes = [p for p in PASSES if any(k[1] == p for k in speed)]
    vals = list(speed.values()) + [v for lohi in spread.values() for v in lohi]
    lo = 10 ** math.floor(math.log10(min(vals) * 0.9))
    top = max(1.0, max(vals))
    hi = 10 ** (math.log10(top) + 0.25 * (math.log10(top) - math.log10(lo)) + 0.05)
    stat, whisk = _stat_words(mg + torch)
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(passes), squeeze=False, layout="constrained",
                             figsize=(6.2 * len(passes), 3.9 * len(rows) + 1.6))
    for i, b in enumerate(rows):
        for ax, p in zip(axes[i], passes, strict=True):
            keys = [k for k in speed if k[0] == b and k[1] == p]
            layers = _layers(records, {k[2] for k in keys})
            algos = sorted({k[3] for k in keys}, key=_algo_key)
            _bars(ax, layers, algos, lambda g, s, b=b, p=p: speed.get((b, p, g, s)),
                  fmt="{:.2g}x", log=True, rotate=True,
                  spread=lambda g, s, b=b, p=p: spread.get((b, p, g, s)))
            ax.axhline(1.0, color="black", lw=1.2, ls="--",
                       label="PyTorch = 1 (above: minigrad faster)")
            ax.set_ylim(lo, hi)
            dev = "/".join(sorted(devices[b]))
            ax.set_title(f"{b} backend vs PyTorch ({dev}), {p}", fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylabel(f"speedup (PyTorch {stat} time /\nminigrad {stat} time)")
    _legend_below(fig, axes[0][0])
    note = _omitted_note(omitted)
    if whisk:
        note = "; ".join(x for x in (note, f"whiskers: the ratio's range over {whisk} of "
                                           "both times") if x)
    _title(fig, "Convolution speedup over PyTorch per algorithm (log scale; higher is "
                "better, > 1: minigrad faster)", _context(info, mg + torch, dtype=True),
           note, info)
    return fig


def sgemm_label(info, gflops):
    """The yardstick line's legend entry: what was measured, on which BLAS kernels."""
    blas = (info or {}).get("blas") or ""
    kernels = f"{blas} kernels" if blas else "BLAS kernels not recorded"
    return f"NumPy sgemm ({kernels}), measured in the same run: {gflops:.0f} GFLOP/s"


def fig_gflops(records, info=None):
    mg, torch, shown, omitted = _conv_panels(records)
    val, spread, devices = {}, {}, {}
    for r in mg + torch:
        e = r["extra"]
        if _number(e.get("flops")):
            g = e["flops"] / r["time"] / 1e9
            lohi = (e["flops"] / r["hi"] / 1e9, e["flops"] / r["lo"] / 1e9)
        else:
            g, lohi = e.get("gflops"), None
        if not _number(g):
            continue
        if e["engine"] == "pytorch":
            for b in shown:                            # PyTorch on the backend's device
                k = (b, e["pass"], e["layer"], "PyTorch", _device(e))
                val[k], spread[k] = g, lohi
        else:
            k = (_backend(e), e["pass"], e["layer"], str(e.get("algo", "?")), _device(e))
            val[k], spread[k] = g, lohi
            devices.setdefault(_backend(e), set()).add(_device(e))
    if not devices:
        return "no conv records with extra_info flops (or gflops), layer, pass and engine"
    sgemm = sorted(r["extra"]["sgemm_gflops"] for r in records
                   if _number(r["extra"].get("sgemm_gflops")))
    c = sgemm[len(sgemm) // 2] if sgemm else None
    rows = [b for b in shown if b in devices]
    passes = [p for p in PASSES if any(k[1] == p for k in val)]
    stat, whisk = _stat_words(mg + torch)
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(passes), squeeze=False, layout="constrained",
                             figsize=(6.2 * len(passes), 3.9 * len(rows) + 1.6))
    for i, b in enumerate(rows):
        devs = devices[b]
        top = max([max(v, (spread.get(k) or (v, v))[1]) for k, v in val.items()
                   if k[0] == b and k[4] in devs] + ([c] if c and "cpu" in devs else []))
        for ax, p in zip(axes[i], passes, strict=True):
            keys = [k for k in val if k[0] == b and k[1] == p and k[4] in devs]
            panel = {(k[2], k[3]): val[k] for k in keys}
            whiskers = {(k[2], k[3]): spread[k] for k in keys}
            layers = _layers(records, {k[0] for k in panel})
            series = sorted({k[1] for k in panel if k[1] != "PyTorch"}, key=_algo_key)
            series += ["PyTorch"] if any(k[1] == "PyTorch" for k in panel) else []
            _bars(ax, layers, series, lambda g, s, panel=panel: panel.get((g, s)),
                  fmt=_gflops_label, rotate=True,
                  style=lambda s: dict(hatch="//", edgecolor="white") if s == "PyTorch"
                  else {}, spread=lambda g, s, w=whiskers: w.get((g, s)))
            if c and "cpu" in devs:
                ax.axhline(c, color="crimson", lw=1.5, ls="--", label=sgemm_label(info, c))
            ax.set_ylim(0, top * 1.22)                 # room for the upright labels
            dev = "/".join(sorted(devs))
            ax.set_title(f"{b} backend and PyTorch ({dev}), {p}", fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylabel(f"GFLOP/s (useful conv FLOPs /\n{stat} time)")
    handles = {}
    for ax in axes.flat:                               # every series and the yardstick once
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    _bottom_legend(fig, handles.values(), handles.keys(), ncols=min(len(handles), 7),
                   fontsize=8)
    note = _omitted_note(omitted)
    if whisk:
        note = "; ".join(x for x in (note, f"whiskers: GFLOP/s over {whisk} of the times")
                         if x)
    if not c:
        note = "; ".join(x for x in (note, "no sgemm_gflops recorded: no NumPy sgemm line")
                         if x)
    _title(fig, "Convolution throughput (GFLOP/s) per algorithm, minigrad and PyTorch"
           + (", with NumPy's sgemm measured in the same run" if c else ""),
           _context(info, mg + torch, dtype=True), note, info)
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
           _context(info, used, dtype=True), info=info)
    return fig


TRADEOFF_LOG_SPREAD = 4.0   # time axis on a log scale when slowest / fastest exceeds this


def _tradeoff_panel(recs, torch):
    """One tradeoff panel's data from the minigrad records of one backend, device and layer
    (each with workspace_bytes): the pass drawn (forward+backward where recorded, else
    forward), {algo: (workspace MiB, record of that pass)}, the algorithms without a record
    of that pass, and PyTorch's record of the same layer, pass and device (or None)."""
    p = ("forward+backward" if any(r["extra"]["pass"] == "forward+backward" for r in recs)
         else "forward")
    ws, rec = {}, {}
    for r in recs:
        e = r["extra"]
        algo = str(e.get("algo", "?"))
        ws[algo] = max(ws.get(algo, 0.0), e["workspace_bytes"] / MIB)
        if e["pass"] == p:
            rec[algo] = r
    algos = sorted(ws, key=_algo_key)
    points = {a: (ws[a], rec[a]) for a in algos if a in rec}
    e = recs[0]["extra"]
    base = [t for t in torch if t["extra"]["layer"] == e["layer"]
            and t["extra"]["pass"] == p and _device(t["extra"]) == _device(e)]
    return p, points, [a for a in algos if a not in rec], min(base, key=lambda t: t["time"],
                                                               default=None)


def _log_ticks(lo, hi):
    """Major ticks for a log axis from lo to hi: the decades, or 1-2-5 when fewer than two
    decades fall inside."""
    import numpy as np

    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** d for d in decades for m in subs]
        ticks = [t for t in ticks if lo <= t <= hi * (1 + 1e-9)]
        if len(ticks) >= 2:
            return ticks
    return list(np.geomspace(lo, hi, 3))


def _place_labels(ax, points, edge=(), fontsize=8):
    """Name each point, {label: (x, y) in data}, beside it, to its right (to its left near
    the right edge), nudging labels up so that none overlaps another or a text already
    written at the right edge just above height y (`edge`: (text, y, fontsize) each). Call
    after the layout is final: the nudges are in points of the drawn axes."""
    to_frac = ax.transScale + ax.transLimits
    box = ax.get_position()
    fig = ax.get_figure()
    w_pt = box.width * fig.get_figwidth() * 72
    h_pt = box.height * fig.get_figheight() * 72
    gap, height = 5.0 / w_pt, fontsize * 1.25 / h_pt
    placed = [(1 - (len(text) * size * 0.58 + 3) / w_pt, to_frac.transform((1, y))[1],
               1.0, to_frac.transform((1, y))[1] + (size * 1.25 + 2) / h_pt)
              for text, y, size in edge]
    mx, my = 4.5 / w_pt, 4.5 / h_pt                   # the markers: not to be covered
    placed += [(fx - mx, fy - my, fx + mx, fy + my)
               for fx, fy in (to_frac.transform(xy) for xy in points.values())]

    def free(x0, y0, x1, y1):
        return 0 <= x0 and x1 <= 1 and 0 <= y0 and y1 <= 1 and not any(
            x0 < bx1 and bx0 < x1 and y0 < by1 and by0 < y1 for bx0, by0, bx1, by1 in placed)

    for label, (x, y) in sorted(points.items(), key=lambda kv: to_frac.transform(kv[1])[1]):
        fx, fy = to_frac.transform((x, y))
        width = len(label) * fontsize * 0.58 / w_pt
        sides = (True, False) if fx + gap + width < 0.98 else (False, True)
        # beside the point, else ever further above or below it, right side first
        tries = [(k * sign * height * 0.6, right) for k in range(40) for sign in (1, -1)
                 for right in sides]
        for dy, right in tries + [(0.0, sides[0])]:
            x0 = fx + gap if right else fx - gap - width
            box = (x0, fy + dy - height / 2, x0 + width, fy + dy + height / 2)
            if free(*box):
                break
        placed.append(box)
        dy *= h_pt
        shifted = abs(dy) > fontsize * 0.6
        ann = ax.annotate(label, (x, y), xytext=(5 if right else -5, dy),
                          textcoords="offset points", ha="left" if right else "right",
                          va="center", fontsize=fontsize, color="0.1",
                          arrowprops=dict(arrowstyle="-", lw=0.6, color="0.45",
                                          shrinkA=0, shrinkB=3) if shifted else None,
                          bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none",
                                    alpha=0.75))
        ann.set_in_layout(False)


def fig_tradeoff(records, info=None):
    """Time against workspace, one panel per layer: each algorithm one point."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    mg, torch, shown, omitted = _conv_panels(records)
    mg = [r for r in mg if _number(r["extra"].get("workspace_bytes"))]
    if not mg:
        return ("no minigrad conv records with extra_info workspace_bytes, layer and pass "
                "(forward or forward+backward)")
    groups = defaultdict(list)
    for r in mg:
        e = r["extra"]
        groups[(_backend(e), _device(e), e["layer"])].append(r)
    rows = [(b, d) for b in shown for d in sorted({k[1] for k in groups if k[0] == b})]
    layers = _layers(records, {k[2] for k in groups})
    stat, whisk = _stat_words(mg)
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(layers), squeeze=False, layout="constrained",
                             figsize=(max(4.6 * len(layers), 12.4), 4.3 * len(rows) + 1.9))
    labels, edge, used, passes = {}, {}, list(mg), set()
    for (b, d), row in zip(rows, axes, strict=True):
        for layer, ax in zip(layers, row, strict=True):
            if (b, d, layer) not in groups:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{layer}: no {b} records", ha="center",
                        transform=ax.transAxes)
                continue
            p, points, missing, base = _tradeoff_panel(groups[(b, d, layer)], torch)
            passes.add(p)
            nonzero = [w for w, _ in points.values() if w > 0] or [1.0]
            lo, hi = min(nonzero), max(nonzero)
            zero = any(w == 0 for w, _ in points.values())
            x0 = 10 ** (math.log10(lo) - 0.65)           # where a 0 workspace is drawn
            sep = 10 ** (math.log10(lo) - 0.35)
            left = 10 ** (math.log10(lo) - (0.9 if zero else 0.3))
            right = 10 ** (math.log10(hi) + 0.3)
            times = []
            for a, (w, r) in points.items():
                x = w if w > 0 else x0
                y, ylo, yhi = r["time"] * 1e3, r["lo"] * 1e3, r["hi"] * 1e3
                ax.plot([x], [y], "o", ms=7, color=_color(a), mec="black", mew=0.5,
                        label=a, zorder=3)
                ax.errorbar([x], [y], yerr=[[max(y - ylo, 0)], [max(yhi - y, 0)]],
                            fmt="none", ecolor=_color(a), elinewidth=1, capsize=2, zorder=2)
                labels.setdefault(ax, {})[a] = (x, y)
                times += [y, ylo, yhi]
            if base is not None:
                t = base["time"] * 1e3
                ax.axhline(t, color=PYTORCH_COLOR, lw=1.3, ls="--",
                           label="PyTorch (workspace not reported)", zorder=1)
                times.append(t)
                used.append(base)
            ax.set_xscale("log")
            ax.set_xlim(left, right)
            ticks = _log_ticks(sep if zero else left, right)
            minor = [m * 10.0 ** dd for dd in range(math.floor(math.log10(left)) - 1,
                                                      math.ceil(math.log10(right)) + 1)
                     for m in range(1, 10)]
            minor = [v for v in minor if (sep if zero else left) < v < right
                     and not any(math.isclose(v, tk) for tk in ticks)]
            ax.xaxis.set_major_locator(FixedLocator(([x0] if zero else []) + ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(
                lambda v, _, x0=x0, z=zero: "0" if z and math.isclose(v, x0) else f"{v:g}"))
            ax.xaxis.set_minor_locator(FixedLocator(minor))
            ax.xaxis.set_minor_formatter(NullFormatter())
            if zero:                                   # log scale: 0 gets a strip
                ax.axvspan(left, sep, color="0.92", zorder=0)
                ax.axvline(sep, color="0.6", lw=0.8, ls=":", zorder=0)
            tlo, thi = min([v for v in times if v > 0] or [1e-3]), max(times)
            if thi / tlo > TRADEOFF_LOG_SPREAD:
                ax.set_yscale("log")
                ax.set_ylim(tlo / 10 ** 0.08, thi * 10 ** 0.12)
                ax.yaxis.set_major_locator(FixedLocator(_log_ticks(tlo / 10 ** 0.08,
                                                                   thi * 10 ** 0.12)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
                scale = "log scale"
            else:
                ax.set_ylim(0, thi * 1.12)
                scale = "linear scale"
            if base is not None:                       # PyTorch's time, at the right edge
                text = f"PyTorch {t:.3g} ms"
                ax.annotate(text, (1, t), xycoords=ax.get_yaxis_transform(), xytext=(-3, 2),
                            textcoords="offset points", ha="right", va="bottom",
                            fontsize=7.5, color=PYTORCH_COLOR).set_in_layout(False)
                edge[ax] = [(text, t, 7.5)]
            ax.grid(which="major", alpha=0.3)
            ax.set_axisbelow(True)
            title = f"{layer}, {p}" + (f" · {b} backend ({d})" if len(rows) > 1 else "")
            if p == "forward":
                title += "\n(no forward+backward records: forward only)"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("forward workspace (MiB, log scale"
                          + ("; grey strip: 0, none)" if zero else ")"), fontsize=9)
            ax.set_ylabel(f"{stat} {p} time (ms, {scale})", fontsize=9)
            notes = []
            if base is None:
                notes.append("no PyTorch record")
            if missing:
                notes.append(f"no {p} record: {', '.join(missing)}")
            if notes:
                ax.text(0.99, 0.01, "; ".join(notes), transform=ax.transAxes, fontsize=7,
                        ha="right", va="bottom", color="0.35")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    algos = sorted((k for k in handles if not k.startswith("PyTorch")), key=_algo_key)
    order = algos + [k for k in handles if k.startswith("PyTorch")]
    _bottom_legend(fig, [handles[k] for k in order], order, ncols=min(len(order), 8),
                   fontsize=8, numpoints=1)
    backends = ", ".join(f"{b} backend" for b in dict.fromkeys(b for b, _ in rows))
    what = "forward+backward" if passes == {"forward+backward"} else "/".join(
        q for q in PASSES if q in passes)
    note = (_omitted_note(omitted, f"one point per algorithm, {backends}")
            or f"one point per algorithm, {backends}")
    note += "\nlower left is better: faster and less workspace" + (
        f"; whiskers: {whisk} of the times" if whisk else "")
    _title(fig, f"Convolution time against workspace per layer: {stat} {what} time vs "
                "forward workspace (kernels.workspace_bytes)",
           _context(info, used, dtype=True), note, info)
    fig.draw_without_rendering()                       # final layout: place the labels
    for ax, pts in labels.items():
        _place_labels(ax, pts, edge.get(ax, ()))
    return fig


LOADER_GROUPS = ("loader", "loader-normalize", "loader-augment")   # throughput records
STALL_GROUP_PREFIX = "loader-stall-"   # training stall records: extra_info stall_share
TRANSFORM_COLORS = {"normalize": "tab:blue", "augment": "tab:orange"}


def _loader_series(r):
    """A loader record's series: (label, color). Group "loader": one per engine; groups
    "loader-<transform>" and "loader-stall-<transform>": one per extra_info transform."""
    e = r["extra"]
    eng = str(e.get("engine", "minigrad"))
    if r["group"] == "loader":
        if eng == "pytorch":
            return "PyTorch DataLoader", PYTORCH_COLOR
        return f"{eng} DataLoader", "tab:green"
    t = str(e.get("transform") or r["group"].rsplit("-", 1)[-1])
    return (f"{t}" + ("" if eng == "minigrad" else f" ({eng})"),
            TRANSFORM_COLORS.get(t, f"C{2 + sum(map(ord, t)) % 8}"))


def _cores_note(records):
    cores = sorted({int(r["extra"]["cores"]) for r in records
                    if _number(r["extra"].get("cores"))})
    return f"{'/'.join(map(str, cores))} core{'s' * (cores != [1])}" if cores else ""


def fig_loader(records, info=None):
    """Throughput (batches/s) against loader threads, one line per engine (group "loader")
    or per transform (groups "loader-normalize", "loader-augment"); where the file has
    groups "loader-stall-*", a second panel: the share of a training epoch spent waiting
    for batches, per transform."""
    pts, used = defaultdict(list), []
    stalls, stall_used = defaultdict(list), []
    for r in records:
        e = r["extra"]
        if not _number(e.get("num_workers")):
            continue
        if r["group"].startswith(STALL_GROUP_PREFIX):
            if _number(e.get("stall_share")):
                stalls[_loader_series(r)].append((e["num_workers"], e["stall_share"]))
                stall_used.append(r)
            continue
        if r["group"] not in LOADER_GROUPS:
            continue
        if _number(e.get("batches")):                 # batches / median round, with spread
            n = e["batches"]
            bps, lo, hi = n / r["time"], n / r["hi"], n / r["lo"]
        else:
            bps = lo = hi = e.get("batches_per_second")
        if _number(bps):
            pts[_loader_series(r)].append((e["num_workers"], bps, lo, hi))
            used.append(r)
    if not pts:
        return (f"no records of group {' / '.join(map(repr, LOADER_GROUPS))} with extra_info "
                "num_workers and batches_per_second (or batches)")
    plt = _plt()
    if stalls:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    # evenly spaced worker counts (0 = in the calling thread cannot go on a log axis)
    ticks = sorted({q[0] for p in (*pts.values(), *stalls.values()) for q in p})
    at = {w: i for i, w in enumerate(ticks)}
    labels = [f"{int(t)}" + (" (main thread)" if t == 0 else "") for t in ticks]
    for (label, color), p in sorted(pts.items()):
        p.sort()
        xs, ys = [at[q[0]] for q in p], [q[1] for q in p]
        err = [[q[1] - q[2] for q in p], [q[3] - q[1] for q in p]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label, color=color)
        for x, q in zip(xs, p, strict=True):
            ax.annotate(f"{q[1]:,.0f}", (x, q[3]), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 4), textcoords="offset points")
    top = max(q[3] for p in pts.values() for q in p)
    low = min(q[2] for p in pts.values() for q in p)
    if low > 0 and top / low > 30:  # cheap and costly transforms: orders of magnitude apart
        ax.set_yscale("log")
        ax.set_ylim(low / 1.5, top * 2)
    else:
        ax.set_ylim(0, top * 1.15)
    ax.set_xticks(range(len(ticks)), labels)
    ax.set_xlabel("num_workers (loader threads)")
    stat, whisk = _stat_words(used)
    ax.set_ylabel(f"throughput (batches / {stat} round time, per s"
                  + (", log scale)" if ax.get_yscale() == "log" else ")"))
    ax.set_title("Loader throughput (higher is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="transform" if any(r["group"] != "loader" for r in used) else None)
    if stalls:
        for (label, color), p in sorted(stalls.items()):
            p.sort()
            xs, ys = [at[q[0]] for q in p], [100 * q[1] for q in p]
            ax2.plot(xs, ys, marker="o", label=label, color=color)
            for x, y in zip(xs, ys, strict=True):
                ax2.annotate(f"{y:.1f}%", (x, y), ha="center", va="bottom", fontsize=7,
                             xytext=(0, 4), textcoords="offset points")
        ax2.set_xticks(range(len(ticks)), labels)
        ax2.set_ylim(0, max(100 * q[1] for p in stalls.values() for q in p) * 1.2 or 1)
        ax2.set_xlabel("num_workers (loader threads)")
        ax2.set_ylabel("stall share (% of training time waiting for a batch)")
        ax2.set_title("Training stalled on the loader (lower is better)", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend(title="transform")
    every = used + stall_used
    cores = _cores_note(every)
    _title(fig, "Data-loader throughput against the number of worker threads"
                + (", and the training time spent waiting for it" if stalls else "")
                + (f" ({cores})" if cores else ""),
           _context(info, every), f"whiskers: throughput over {whisk} of the round times"
           if whisk else "", info)
    return fig


SCALING_GROUP = "scaling-threads"


def fig_scaling(records, info=None):
    """Group "scaling-threads": images/s against workers, one line per strategy, and the
    training time until the test accuracy first reached the target."""
    rs = [r for r in records if r["group"] == SCALING_GROUP and "strategy" in r["extra"]
          and _number(r["extra"].get("workers"))
          and _number(r["extra"].get("images_per_second"))]
    refs = [r for r in rs if r["extra"].get("reference") == "one-core"]
    rs = [r for r in rs if r not in refs]
    if not rs:
        return (f"no records of group {SCALING_GROUP!r} with extra_info strategy, workers "
                "and images_per_second")
    by = defaultdict(dict)   # strategy -> {workers: extra_info}
    for r in rs:
        by[str(r["extra"]["strategy"])][r["extra"]["workers"]] = r["extra"]
    strategies = sorted(by, key=lambda s: (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER
                                           else len(STRATEGY_ORDER), s))
    ticks = sorted({w for d in by.values() for w in d})
    at = {w: i for i, w in enumerate(ticks)}
    color = {s: f"C{i}" for i, s in enumerate(strategies)}
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.9), layout="constrained")
    for s in strategies:
        ws = sorted(by[s])
        ys = [by[s][w]["images_per_second"] for w in ws]
        a1.plot([at[w] for w in ws], ys, marker="o", label=s, color=color[s])
        for w, y in zip(ws, ys, strict=True):
            a1.annotate(f"{y:,.0f}", (at[w], y), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 4), textcoords="offset points")
    cores = sorted({int(r["extra"]["cores"]) for r in rs if _number(r["extra"].get("cores"))})
    if len(cores) == 1 and any(w > cores[0] for w in ticks):  # where workers outnumber cores
        first = min(at[w] for w in ticks if w > cores[0])
        for a in (a1, a2):
            a.axvspan(first - 0.5, len(ticks) - 0.5, color="0.9", zorder=0,
                      label=f"more workers than cores ({cores[0]})" if a is a1 else None)
    top_ips = max(r["extra"]["images_per_second"] for r in rs)
    for r in refs[:1]:  # the ceiling: every core as fast as one worker alone on one core
        c = int(r["extra"].get("cores") or 1)
        ceiling = c * r["extra"]["images_per_second"]
        a1.axhline(ceiling, color="0.4", ls="--", lw=1,
                   label=f"ceiling: {c} x one worker on one core ({ceiling:,.0f})")
        top_ips = max(top_ips, ceiling)
    a1.set_ylim(0, top_ips * 1.2)
    a1.set_ylabel("images per second (all workers together)")
    a1.set_title("Training throughput (higher is better)", fontsize=10)
    a1.legend(title="strategy", fontsize=8)
    # time to target: bars grouped by workers, one per strategy; "not reached" where absent
    width = 0.8 / len(strategies)
    targets = sorted({r["extra"]["target_accuracy"] for r in rs
                      if _number(r["extra"].get("target_accuracy"))})
    tops = [by[s][w]["time_to_target_s"] for s in strategies for w in by[s]
            if _number(by[s][w].get("time_to_target_s"))]
    top = max(tops, default=1.0)
    for k, s in enumerate(strategies):
        for w, e in sorted(by[s].items()):
            x = at[w] - 0.4 + width * (k + 0.5)
            t = e.get("time_to_target_s")
            if _number(t):
                a2.bar(x, t, width, color=color[s], label=s if w == min(by[s]) else None)
                a2.annotate(f"{t:.3g}s", (x, t), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
            else:
                a2.annotate("not\nreached", (x, 0), ha="center", va="bottom", fontsize=6.5,
                            color=color[s])
    a2.set_ylim(0, top * 1.25)
    a2.set_ylabel("training seconds to reach the target")
    target = f"{100 * targets[0]:g}% test accuracy" if len(targets) == 1 else "the target"
    a2.set_title(f"Time to {target} (lower is better)", fontsize=10)
    if a2.get_legend_handles_labels()[0]:
        a2.legend(title="strategy", fontsize=8)
    for a in (a1, a2):
        a.set_xticks(range(len(ticks)), [f"{int(w)}" for w in ticks])
        a.set_xlim(-0.5, len(ticks) - 0.5)
        a.set_xlabel("workers (threads)")
        a.grid(axis="y", alpha=0.3)
        a.set_axisbelow(True)
    on = f"{'/'.join(map(str, cores))} core{'s' * (cores != [1])}" if cores else "? cores"
    _title(fig, f"Scaling with workers on {on}: throughput and time to {target}, "
                "per strategy", _context(info, rs),
           "perfect scaling: images/s growing with the workers up to the cores", info)
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
        scale, unit = (1e3, "ms") if max(r["time"] for r in rs) < 1 else (1.0, "s")
        times = [r["time"] * scale for r in rs]
        his = [r["hi"] * scale for r in rs]
        err = [[(r["time"] - r["lo"]) * scale for r in rs],
               [(r["hi"] - r["time"]) * scale for r in rs]]
        bars = ax.bar(names, times, yerr=err, color=colors, capsize=3, error_kw=dict(lw=1))
        pt = next((v for v, n in zip(times, names, strict=True) if n == "PyTorch"), None)
        if pt is not None:
            bars[names.index("PyTorch")].set(edgecolor="black", lw=1.5, hatch="//")
            ax.axhline(pt, color=PYTORCH_COLOR, ls="--", lw=1, zorder=0)
        for i, (v, top) in enumerate(zip(times, his, strict=True)):
            label = f"{v:.3g} {unit}"
            if pt is not None and names[i] != "PyTorch":
                label += f"\n{v / pt:.2g}x PyTorch"
            ax.annotate(label, (i, top), ha="center", va="bottom",
                        fontsize=7.5, xytext=(0, 2), textcoords="offset points")
        ax.set_ylim(0, max(his) * 1.3)
        e0 = rs[0]["extra"]
        detail = ", ".join(s for s in (
            f"{e0['epochs']} epoch{'s' * (e0['epochs'] != 1)}" if _number(e0.get("epochs"))
            else "",
            f"batch {e0['batch_size']}" if _number(e0.get("batch_size")) else "") if s)
        group = rs[0]["group"]
        head = t + (f" [{group}]" if group and group != t else "")
        ax.set_title(f"{head}\ntime per {per}" + (f" ({detail})" if detail else ""),
                     fontsize=10)
        ax.set_ylabel(_time_label(rs, unit, f"time per {per}"))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.tick_params(axis="x", labelsize=8)
        if not any(has_acc):
            continue
        ax = fig.add_subplot(grid[1, col])
        for i, (r, ok) in enumerate(zip(rs, has_acc, strict=True)):
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
                "lower time is better", _context(info, runs), info=info)
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
                "per strategy", _context(info, used), info=info)
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
        for i, v in zip(xs, vs, strict=True):
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
           "grey: one worker (the baseline); time per step from the last round's training "
           "seconds" if "0.7" in colors else "time per step from the last round's training "
           "seconds", info)
    return fig


SPLIT_GROUP = SCRIPT_FIGURES["split"]
SPLIT_ORDER = ("sync", "model-parallel", "tensor-slicing")
SPLIT_NAMES = {"sync": "data parallel (sync)", "model-parallel": "model parallel (filters)",
               "tensor-slicing": "tensor slicing (row bands)"}
SPLIT_KEYS = ("param_bytes_per_worker", "optimizer_bytes_per_worker",
              "activation_bytes_per_worker", "moved_per_step_per_worker")


def fig_split(records, info=None):
    """Group "split-memory" (bench/split_memory.py): per worker against N, one colour per
    strategy: parameters + optimizer state, activations, bytes moved per step."""
    rs = [r for r in records if r["group"] == SPLIT_GROUP and "strategy" in r["extra"]
          and _number(r["extra"].get("workers"))
          and all(_number(r["extra"].get(k)) for k in SPLIT_KEYS)]
    if not rs:
        return (f"no records of group {SPLIT_GROUP!r} with extra_info strategy, workers, "
                + ", ".join(SPLIT_KEYS) + " (bench/split_memory.py writes them)")
    by = defaultdict(dict)   # strategy -> {workers: extra_info}
    for r in rs:
        by[str(r["extra"]["strategy"])][r["extra"]["workers"]] = r["extra"]
    strategies = sorted(by, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER
                                           else len(SPLIT_ORDER), s))
    ticks = sorted({w for d in by.values() for w in d})
    at = {w: i for i, w in enumerate(ticks)}
    color = {s: f"C{i}" for i, s in enumerate(strategies)}
    name = {s: SPLIT_NAMES.get(s, s) for s in strategies}
    plt = _plt()
    from matplotlib.patches import Patch

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 5.4), layout="constrained")
    # model state: parameters (solid) + optimizer state (hatched), one bar per strategy
    width = 0.8 / len(strategies)
    for k, s in enumerate(strategies):
        for w, e in sorted(by[s].items()):
            x = at[w] - 0.4 + width * (k + 0.5)
            p, o = e["param_bytes_per_worker"] / MIB, e["optimizer_bytes_per_worker"] / MIB
            a1.bar(x, p, width, color=color[s], edgecolor="0.25", lw=0.5)
            a1.bar(x, o, width, bottom=p, color=color[s], alpha=0.45, hatch="//",
                   edgecolor="0.25", lw=0.5)
            a1.annotate(f"{p + o:.2f}", (x, p + o), ha="center", va="bottom", fontsize=6.5,
                        xytext=(0, 2), textcoords="offset points")
    top = max(e["param_bytes_per_worker"] + e["optimizer_bytes_per_worker"]
              for d in by.values() for e in d.values()) / MIB
    a1.set_ylim(0, top * 1.2)
    a1.set_ylabel("MiB per worker (the largest worker)")
    a1.set_title("Model state: parameters + optimizer state", fontsize=10)
    a1.legend(handles=[Patch(facecolor="0.6", edgecolor="0.25", label="parameters"),
                       Patch(facecolor="0.6", alpha=0.45, hatch="//", edgecolor="0.25",
                             label="optimizer state (SGD momentum)")],
              fontsize=8, loc="upper right")
    # activations, and tracemalloc's peak where recorded
    peaks = False
    for s in strategies:
        ws = sorted(by[s])
        a2.plot([at[w] for w in ws], [by[s][w]["activation_bytes_per_worker"] / MIB
                                      for w in ws], marker="o", color=color[s], label=name[s])
        pk = [w for w in ws if _number(by[s][w].get("peak_bytes_per_worker"))]
        if pk:
            peaks = True
            a2.plot([at[w] for w in pk], [by[s][w]["peak_bytes_per_worker"] / MIB for w in pk],
                    ls=":", marker=".", color=color[s])
    a2.set_ylim(bottom=0)
    a2.set_ylabel("MiB per worker (the largest worker)")
    a2.set_title("Activations kept for the backward"
                 + ("\n(dotted: traced peak of all allocations)" if peaks else ""),
                 fontsize=10)
    a2.legend(title="strategy", fontsize=8)
    # bytes moved per step, and tensor slicing's halo part
    for s in strategies:
        ws = sorted(by[s])
        a3.plot([at[w] for w in ws], [by[s][w]["moved_per_step_per_worker"] / MIB
                                      for w in ws], marker="o", color=color[s], label=name[s])
        halo = [w for w in ws if _number(by[s][w].get("halo_bytes_per_step_per_worker"))]
        if any(by[s][w]["halo_bytes_per_step_per_worker"] > 0 for w in halo):
            a3.plot([at[w] for w in halo],
                    [by[s][w]["halo_bytes_per_step_per_worker"] / MIB for w in halo],
                    ls=":", marker=".", color=color[s], label=f"{name[s]}: halo rows")
    a3.set_ylim(bottom=0)
    a3.set_ylabel("MiB received per step per worker (mean; also what it sends)")
    a3.set_title("Communication per step", fontsize=10)
    a3.legend(fontsize=8)
    for a in (a1, a2, a3):
        a.set_xticks(range(len(ticks)), [f"{int(w)}" for w in ticks])
        a.set_xlim(-0.5, len(ticks) - 0.5)
        a.set_xlabel("workers N")
        a.grid(axis="y", alpha=0.3)
        a.set_axisbelow(True)
    batch = sorted({int(r["extra"]["batch_size"]) for r in rs
                    if _number(r["extra"].get("batch_size"))})
    on = f", global batch {batch[0]}" if len(batch) == 1 else ""
    _title(fig, f"Splitting the batch, the filters or the feature maps: memory and bytes per "
                f"worker against N (MNIST CNN{on})", _context(info, rs),
           "counts, not timings: data parallel splits the batch (a whole replica each), "
           "model parallel the weights, tensor slicing the activations", info)
    return fig


DRAW = {"speedup": fig_speedup, "gflops": fig_gflops, "workspace": fig_workspace,
        "tradeoff": fig_tradeoff,
        "loader": fig_loader, "training": fig_training, "dgc": fig_dgc,
        "distributed": fig_scaling, "distributed-step": fig_distributed, "split": fig_split}


# --------------------------------------------------------------------------- comparing runs


def _slug(s):
    """A file-name-safe form of a group name: "mnist-conv2 forward+backward" ->
    "mnist-conv2-forward+backward"."""
    s = re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-")
    return s or "ungrouped"


def run_label(path, info):
    """A short name for one results file: pytest-benchmark's autosave names
    (0001_<commit>_<date>_<time>[_uncommitted-changes].json) become "0001 (commit abc1234)",
    anything else its stem; "+dirty" marks a dirty tree."""
    stem = Path(path).stem
    m = re.match(r"^(\d{4})_", stem)
    name = m.group(1) if m else stem
    if info.get("commit") and (m or len(stem) > 24):
        name += f" ({info['commit']}{'+dirty' if info.get('dirty') else ''})"
    return name


def _bench_label(r):
    """A benchmark's name inside its group: the test's parameters, less the words the group
    name already says ("test_conv[mnist-conv2-im2col-numba-forward]" in group "mnist-conv2
    forward" -> "im2col-numba"); the test's name when nothing is left."""
    m = re.match(r"^(?:test_)?([^\[]*)(?:\[(.*)\])?$", r["name"])
    func, params = (m.group(1), m.group(2) or "") if m else (r["name"], "")
    for word in sorted(r["group"].split(), key=len, reverse=True):
        params = params.replace(word, "")
    params = re.sub(r"-{2,}", "-", params).strip("-")
    return params or func


def _same_machine(infos):
    return len({i.get("cpu") or "" for i in infos}) <= 1


def fig_compare(runs, group):
    """One benchmark group across results files: each file's time per benchmark side by
    side (horizontal bars, whiskers: the spread), later files' times as ratios to the
    first file's. runs: [(label, records, info)] in file order."""
    rows = {}                                          # fullname -> its records per run
    for k, (_, recs, _) in enumerate(runs):
        for r in recs:
            if (r["group"] or "(no group)") == group:
                rows.setdefault(r["fullname"], [None] * len(runs))[k] = r
    if not rows:
        return f"no benchmarks of group {group!r}"
    # fastest first, by the first file that has the benchmark
    order = sorted(rows, key=lambda f: next(r["time"] for r in rows[f] if r))
    every = [r for f in order for r in rows[f] if r]
    big = max(r["hi"] for r in every)
    scale, unit = next((s, u) for s, u in ((1.0, "s"), (1e3, "ms"), (1e6, "µs"))
                       if big * s >= 1 or u == "µs")
    plt = _plt()
    n, k = len(order), len(runs)
    height = 1.9 + n * (0.22 * k + 0.18)
    fig, ax = plt.subplots(figsize=(10.5, height), layout="constrained")
    bar = 0.8 / k
    colors = [plt.get_cmap("tab10")(i) for i in range(k)]
    log = max(r["hi"] for r in every) / min(r["lo"] for r in every) > 30
    for j, (label, _, _) in enumerate(runs):
        ys, ts, lo, hi = [], [], [], []
        for i, f in enumerate(order):
            r = rows[f][j]
            if r is None:
                ax.annotate("not in this file", (0, i + (j - (k - 1) / 2) * bar),
                            xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=8,
                            color=colors[j])
                continue
            ys.append(i + (j - (k - 1) / 2) * bar)
            ts.append(r["time"] * scale)
            lo.append((r["time"] - r["lo"]) * scale)
            hi.append((r["hi"] - r["time"]) * scale)
        ax.barh(ys, ts, bar * 0.9, xerr=[lo, hi], color=colors[j], label=label,
                error_kw=dict(lw=0.8, capsize=2, ecolor="0.15"))
        for y, t, h, f in zip(ys, ts, hi, [f for f in order if rows[f][j]], strict=True):
            text = f"{t:.3g} {unit}"
            first = rows[f][0]
            if j > 0 and first is not None:
                text += f"  ({t / (first['time'] * scale):.2f}x)"
            ax.annotate(text, (t + h, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)
    names = [_bench_label(next(r for r in rows[f] if r)) for f in order]
    ax.set_yticks(range(n), names, fontsize=9)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlim(right=ax.get_xlim()[1] * (3 if log else 1.25))   # room for the labels
    ax.set_xlabel(_time_label(every, unit, "time per call") + (" (log scale)" if log else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    _bottom_legend(fig, handles, labels, ncols=min(k, 3), fontsize=9, title="results file")
    infos = [i for _, _, i in runs]
    machines = [i["machine"] for i in infos if i.get("machine")]
    context = (f"CPU: {machines[0]}" if machines and _same_machine(infos)
               else "different machines: " + " vs ".join(machines) if machines else "")
    note = f"({runs[0][0]} = 1: later files' times as ratios to it; lower is faster)" \
        if k > 1 else ""
    fig.suptitle("\n".join(x for x in (f"Benchmark group {group!r}: "
                                       + " vs ".join(lab for lab, _, _ in runs), note,
                                       context) if x), fontsize=11)
    _footer(fig, None, " | ".join(f"{lab}: " + footer_text(i).replace(
        " · drawn by minigrad plot", "") for lab, _, i in runs) + " · drawn by minigrad plot")
    if any(i.get("dirty") for i in infos):
        fig.texts[-1].set_color("crimson")
    return fig


def compare(paths, out_dir, formats=("png", "svg"), labels=None):
    """Draw one comparison figure per benchmark group of the results files `paths` (two or
    more) into out_dir. Returns (written, infos): the files and each file's info."""
    runs = []
    for i, path in enumerate(paths):
        recs, info = read(path)
        runs.append((labels[i] if labels else run_label(path, info), recs, info))
    if labels is None and len({lab for lab, _, _ in runs}) < len(runs):   # same stems
        runs = [(f"{lab} [{Path(path).parent.name or Path(path).name}]", recs, info)
                for (lab, recs, info), path in zip(runs, paths, strict=True)]
    groups = list(dict.fromkeys((r["group"] or "(no group)") for _, recs, _ in runs
                                for r in recs))
    out_dir = _out_dir(out_dir)
    plt = _plt()
    written = []
    for g in groups:
        fig = fig_compare(runs, g)
        for fmt in formats:
            f = out_dir / f"compare-{_slug(g)}.{fmt}"
            fig.savefig(f, dpi=150 if fmt == "png" else None)
            written.append(f)
        plt.close(fig)
    return written, [i for _, _, i in runs]


# --------------------------------------------------------------------------- training logs


def is_training_log(path):
    """True for a `minigrad train --log` file: a .jsonl name, or a first line that is a JSON
    object with an "event" key."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return True
    try:
        with path.open() as f:
            first = f.readline()
        doc = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and "event" in doc


def read_log(path):
    """One training run from a JSON-lines log: {"label", "config", "epochs" (the "epoch"
    events, in order), "steps" (the "step" events), "diverged" (the event or None),
    "ended" (an "end" event was seen), "truncated" (the last line was cut off), "source"}.

    Unknown events and keys are ignored. A last line that is not JSON is a killed run's
    half-written line: dropped, and "truncated" set. A bad line elsewhere is an error.
    """
    path = Path(path)
    text = _read_text(path, "training log (.jsonl)", "`minigrad train ... --log FILE.jsonl` "
                      "writes one")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    run = {"label": None, "config": {}, "epochs": [], "steps": [], "diverged": None,
           "ended": False, "truncated": False, "source": path.name}
    events = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                run["truncated"] = True
                break
            raise ValueError(f"{path}: line {n} is not JSON ({e.msg}); give a log written "
                             "by `minigrad train ... --log FILE.jsonl`") from None
        if not isinstance(ev, dict) or "event" not in ev:
            continue
        events += 1
        kind = ev["event"]
        if kind == "start":
            run["config"] = ev.get("config") if isinstance(ev.get("config"), dict) else {}
            run["label"] = ev.get("run") or None
        elif kind == "epoch" and _number(ev.get("epoch")):
            run["epochs"].append(ev)
        elif kind == "step" and _number(ev.get("step")):
            run["steps"].append(ev)
        elif kind == "diverged":
            run["diverged"] = ev
        elif kind == "end":
            run["ended"] = True
    if not events:
        raise ValueError(f"{path}: no JSON objects with an \"event\" key; give a log written "
                         "by `minigrad train ... --log FILE.jsonl`")
    run["label"] = str(run["label"] or path.stem)
    return run


CONFIG_ORDER = ("task", "model", "conv", "strategy", "workers", "optimizer", "lr",
                "lr_schedule", "momentum", "batch_size", "epochs", "seed")


def _config_words(cfg, keys):
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def _label_runs(runs):
    """Legend labels: each run's label, made distinct by the config keys that differ between
    runs where two share one; "(diverged)" / "(incomplete)" where a run did not finish."""
    labels = [r["label"] for r in runs]
    if len(set(labels)) < len(labels):
        keys = [k for k in CONFIG_ORDER + tuple(sorted({k for r in runs for k in r["config"]}
                                                       - set(CONFIG_ORDER)))
                if len({json.dumps(r["config"].get(k), sort_keys=True) for r in runs}) > 1]
        labels = [f"{lab} ({_config_words(r['config'], keys)})" if keys else
                  f"{lab} [{r['source']}]" for lab, r in zip(labels, runs, strict=True)]
    out = []
    for lab, r in zip(labels, runs, strict=True):
        if r["diverged"] is not None:
            lab += " (diverged)"
        elif not r["ended"]:
            lab += " (incomplete: no end event)"
        out.append(lab)
    return out


ACCURACY_STYLES = (("test_accuracy", "test", "-"), ("val_accuracy", "validation", ":"),
                   ("train_accuracy", "train", "--"))


def fig_curves(runs, per="epoch"):
    """Loss and accuracy of training runs (from read_log) against epoch, or against the
    global step with per="step"; one colour per run, one line style per accuracy."""
    if per not in ("epoch", "step"):
        raise ValueError(f"per must be 'epoch' or 'step', got {per!r}")
    if not any(r["epochs"] or (per == "step" and r["steps"]) for r in runs):
        return ("no epoch events in the logs (a run killed in its first epoch?)"
                + ("; try --per step" if any(r["steps"] for r in runs) else ""))
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
    labels = _label_runs(runs)
    styles_used = set()
    for k, (r, lab) in enumerate(zip(runs, labels, strict=True)):
        color = plt.get_cmap("tab10")(k % 10)
        ep = r["epochs"]
        x_of = (lambda e: e["epoch"]) if per == "epoch" else (lambda e: e["step"])
        if per == "step" and r["steps"]:
            pts = [(e["step"], e["loss"]) for e in r["steps"] if _number(e.get("loss"))]
        else:
            pts = [(x_of(e), e["loss"]) for e in ep if _number(e.get("loss"))
                   and _number(x_of(e))]
        if pts:
            a1.plot(*zip(*pts, strict=True), color=color, label=lab,
                    marker="o" if per == "epoch" and len(pts) < 40 else None, ms=4)
        if r["diverged"] is not None and pts:
            a1.plot(*pts[-1], marker="X", ms=11, color=color, mec="black")
        for key, _, ls in ACCURACY_STYLES:
            acc = [(x_of(e), 100 * e[key]) for e in ep if _number(e.get(key))
                   and _number(x_of(e))]
            if acc:
                a2.plot(*zip(*acc, strict=True), color=color, ls=ls,
                        marker="o" if len(acc) < 40 else None, ms=4)
                styles_used.add(key)
    xlabel = "epoch" if per == "epoch" else "step (global)"
    a1.set_xlabel(xlabel)
    a1.set_ylabel("mean training loss of the epoch" if per == "epoch" else
                  "training loss (running mean within the epoch)")
    a1.set_title("Training loss", fontsize=11)
    losses = [e["loss"] for r in runs for e in r["epochs"] + r["steps"]
              if _number(e.get("loss")) and e["loss"] > 0]
    if losses and max(losses) / min(losses) > 20:
        a1.set_yscale("log")
    a2.set_xlabel(xlabel)
    a2.set_ylabel("accuracy (%)")
    a2.set_title("Accuracy", fontsize=11)
    if per == "epoch":
        for a in (a1, a2):
            from matplotlib.ticker import MaxNLocator

            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in (a1, a2):
        a.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=plt.get_cmap("tab10")(k % 10), lw=2)
               for k in range(len(runs))]
    style = [Line2D([], [], color="0.2", ls=ls) for key, _, ls in ACCURACY_STYLES
             if key in styles_used]
    style_names = [f"{name} accuracy" for key, name, _ in ACCURACY_STYLES if key in styles_used]
    if any(r["diverged"] is not None for r in runs):
        style.append(Line2D([], [], color="0.2", marker="X", ls="none", mec="black"))
        style_names.append("diverged here")
    if style:
        a2.legend(style, style_names, fontsize=9, loc="lower right", title="line style")
    elif a2.has_data() is False:
        a2.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center",
                transform=a2.transAxes, color="0.4")
    _bottom_legend(fig, handles, labels, ncols=min(len(runs), 3), fontsize=9, title="run")
    common = [k for k in CONFIG_ORDER if all(k in r["config"] for r in runs)
              and len({json.dumps(r["config"][k], sort_keys=True) for r in runs}) == 1]
    context = _config_words(runs[0]["config"], common)
    fig.suptitle("\n".join(x for x in (f"Training curves, per {per}: loss and accuracy"
                                       f" ({len(runs)} run{'s' * (len(runs) != 1)})",
                                       context) if x), fontsize=11)
    truncated = [r["source"] for r in runs if r["truncated"]]
    _footer(fig, None, "source: " + ", ".join(r["source"] for r in runs)
            + (f" · last line cut off (killed run?): {', '.join(truncated)}" if truncated
               else "") + " · drawn by minigrad plot")
    return fig


def curves(paths, out_dir, formats=("png", "svg"), per="epoch", labels=None):
    """Draw the training curves of the logs `paths` to out_dir/curves.<fmt>. Returns
    (written, runs); raises ValueError when nothing can be drawn."""
    runs = [read_log(p) for p in paths]
    if labels:
        for r, lab in zip(runs, labels, strict=True):
            r["label"] = lab
    fig = fig_curves(runs, per)
    if isinstance(fig, str):
        raise ValueError(f"{', '.join(map(str, paths))}: {fig}")
    out_dir = _out_dir(out_dir)
    written = []
    for fmt in formats:
        f = out_dir / f"curves.{fmt}"
        fig.savefig(f, dpi=150 if fmt == "png" else None)
        written.append(f)
    _plt().close(fig)
    return written, runs


# --------------------------------------------------------------------------- drivers


def _out_dir(out_dir):
    """Create out_dir (and its parents); ValueError, with what to do, if that fails."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a directory; give a directory "
                         "(it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output directory {out_dir} "
                         f"({e.strerror or e}); give a writable --out DIR") from None
    return out_dir


def figures_of(records):
    """The figures a file's records are asked for: FIGURES unless every record belongs to
    a script figure's group (see "Figures from a results file of their own" above), then
    each script figure whose group is present."""
    groups = {r["group"] for r in records}
    own = set(SCRIPT_FIGURES.values())
    names = [] if records and groups <= own else list(FIGURES)
    return names + [n for n, g in SCRIPT_FIGURES.items() if g in groups]


def plot(path, out_dir, formats=("png", "svg")):
    """Draw every figure the records of `path` allow into `out_dir`.

    Returns (written, skipped, removed): the files written, {figure: why it was skipped},
    and {figure: [stale files of that skipped figure, from an earlier run, deleted]}.
    """
    records, info = read(path)
    out_dir = _out_dir(out_dir)
    plt = _plt()
    written, skipped, removed = [], {}, {}
    for name in figures_of(records):
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

FORMATS = ("png", "svg", "pdf")


def _dirty_warning(path, info):
    if info.get("dirty"):
        at = f" at commit {info['commit']}" if info.get("commit") else ""
        print(f"minigrad plot: warning: {path} was measured on a dirty tree (uncommitted "
              f"changes{at}); its figures cannot be reproduced from any commit: commit, "
              "then rerun the benchmarks", file=sys.stderr)


def _run(args):
    formats = tuple(f.strip().lower() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--format {args.format!r}: unknown format {', '.join(bad) or '(none)'}"
                         f"; choose from {', '.join(FORMATS)}, comma-separated")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    for f in args.results:
        if not Path(f).is_file():
            _read_text(f, "results (.json) or training log (.jsonl)",
                       "`pytest bench --benchmark-json=FILE` or `minigrad train --log "
                       "FILE.jsonl` writes one")
    logs = [f for f in args.results if is_training_log(f)]
    bench = [f for f in args.results if f not in logs]
    if labels and len(labels) != len(args.results):
        raise ValueError(f"--labels gives {len(labels)} names for {len(args.results)} files; "
                         "give one per file, comma-separated")
    label_of = dict(zip(args.results, labels, strict=True)) if labels else {}
    written = []
    if len(bench) == 1:
        files, skipped, removed = plot(bench[0], args.out, formats)
        _dirty_warning(bench[0], read(bench[0])[1])
        written += files
        for name, why in skipped.items():
            gone = removed.get(name)
            note = (f"; deleted the stale {', '.join(f.name for f in gone)} of an earlier run"
                    if gone else "")
            print(f"skipped {name}: {why}{note}")
    elif bench:
        files, infos = compare(bench, args.out, formats,
                               [label_of[f] for f in bench] if labels else None)
        for f, info in zip(bench, infos, strict=True):
            _dirty_warning(f, info)
        written += files
        print("(each file's own figures: minigrad plot FILE --out DIR, one file at a time)")
    if logs:
        files, _ = curves(logs, args.out, formats, args.per,
                          [label_of[f] for f in logs] if labels else None)
        written += files
    for f in written:
        print(f"wrote {f}")
    return 0


def run(args):
    try:
        return _run(args)
    except ValueError as e:
        print(f"minigrad plot: {e}", file=sys.stderr)
        return 2


def add_parser(subparsers):
    """Register `minigrad plot` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "plot", help="draw benchmark figures, comparisons of runs, and training curves",
        description="One pytest-benchmark JSON: speedup, GFLOP/s, workspace, time vs "
                    "workspace (tradeoff), loader, "
                    "training, DGC, distributed and scaling figures (bench/split_memory.py's "
                    "file: the split figure). Two or more: each benchmark "
                    "group's times side by side, file against file. Training logs "
                    "(`minigrad train --log FILE.jsonl`): loss and accuracy curves. See "
                    "minigrad/tools/plot.py for the extra_info keys.")
    p.add_argument("results", nargs="+", metavar="FILE",
                   help="pytest-benchmark JSON files and/or training logs (.jsonl)")
    p.add_argument("--out", default="figures", metavar="DIR",
                   help="directory for the figures, created if missing (default: figures)")
    p.add_argument("--format", default="png,svg",
                   help=f"comma-separated, from {', '.join(FORMATS)} (default png,svg)")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="legend names, one per FILE (default: from the file names and "
                        "their commits)")
    p.add_argument("--per", choices=("epoch", "step"), default="epoch",
                   help="training curves against epoch (default) or global step")
    p.set_defaults(func=run)
    return p


if __name__ == "__main__":
    import argparse

    _p = argparse.ArgumentParser(prog="minigrad")
    add_parser(_p.add_subparsers(dest="command", required=True))
    _a = _p.parse_args()
    sys.exit(_a.func(_a))
