"""Benchmark suite: the factored layer against dense layers, over the paper's sizes.

For each configuration (D outputs, d hidden units, K targets per example,
minibatch m), each dtype (float32, float64) and each BLAS thread setting
(one thread, all cores), times the SGD step of

* :class:`fastsparse.FactoredOutputLayer`, online (``mode="online"``, time
  per example) and minibatch (``mode="batch"``, time per minibatch of m);
* :class:`fastsparse.NaiveOutputLayer`, the dense layer doing the same work
  (same modes);
* PyTorch (when installed): ``nn.Linear(d, D, bias=False)``, the squared
  error summed over all D outputs (``mse_loss(..., reduction="sum")``
  against the dense target), ``backward()`` and a ``torch.optim.SGD`` step,
  one example per step ("online") and one minibatch per step ("batch"):
  what users would otherwise run;

and reports the speed-ups naive/factored and torch/factored, ratios of
medians measured in the same run, beside the paper's estimate D / (4 d).
A sweep over D at fixed d (float32, one thread) gives a log-log plot (PNG,
needs matplotlib) of the time per example of each layer against D.

How things are measured
-----------------------
* Every timed call gets fresh data, generated outside the timed region:
  unit-norm random h (so ``r = 1 - 2 lr``) and Zipf(1)-distributed target
  indices with value 1.  Only the ``step`` call (for torch: ``zero_grad``,
  forward, loss, ``backward``, ``optimizer.step``) is timed.  Medians (and
  minima, in the JSON) over the timed calls, after untimed warm-up calls.
* Factored online: calls of m examples, or of ``--online-examples`` (default
  8) when m = 1, so that the fixed per-call cost (validation, the lock;
  ``bench/microbench.py`` measures it) is amortised; the table shows the
  examples per call.  For
  m = 1 the minibatch step is the same update as the online one: its row
  shows one ``mode="batch"`` call of one example, per-call cost included.
* Naive and torch: each example costs O(D d) (at D = 793 471 about 0.3 s
  for the naive layer in float32, more for torch), so they get one warm-up
  call and only as many timed calls as fit in ``--slow-budget`` seconds
  (at least ``--slow-min-repeats``, at most ``--repeats``); their online
  calls have ``--slow-online-examples`` examples (default 2: each example is
  its own O(D d) step, the per-call cost is negligible).  Cells timed over
  fewer calls than ``--repeats`` are marked ``*`` in the tables.  Their
  per-example online time does not depend on m: it is measured once per
  (D, d, K, dtype, threads) and shared by configurations that differ only
  in m.
* Layers are built from random N(0, 1/d) weights by their constructors (the
  factored and the naive layer from the same seed: the same W; torch's
  weights drawn alike by torch).  Construction is not part of the step
  times (the factored layer's includes the O(D d^2) Gram matrix, about 10 s
  at D = 793 471, d = 512; ``from_weights`` would cost the same plus a copy
  of W); it is reported separately.  One layer exists at a time (a
  float64 layer at D = 793 471, d = 512 is 3.2 GB, the torch one twice
  that with its gradient); each layer is timed at every thread setting and
  every configuration with its (D, d) before it is deleted.
* Threads: ``threadpoolctl.threadpool_limits`` sets the BLAS threads and
  ``torch.set_num_threads`` torch's.  The factored layer runs with its
  default ``single_thread_blas=True`` in the one-thread setting and with
  ``single_thread_blas=False`` in the others, so that its BLAS-3 calls use
  the threads (by default it runs BLAS on one thread:
  see the README's "Threads"); the setting matters for the dense layers.

Results file (JSON)
-------------------
Written to ``--json`` (default ``bench/results/suite-<date>-<time>.json``),
rewritten after each layer is done (``"complete": false`` until the end)::

    {"schema": "fastsparse-bench-suite/1", "complete": bool,
     "started", "finished": ISO 8601 dates, "elapsed_seconds": float,
     "command": [str], "options": {...},
     "environment": {"platform", "cpu_model", "logical_cpus", "usable_cpus",
                     "ram_bytes", "python", "numpy", "scipy",
                     "threadpoolctl", "torch", "matplotlib", "fastsparse",
                     "git_commit", "git_dirty", "threadpool_info": [...]},
     "environment_lines": [[name, value], ...],
     "load_average": {"start", "end": [1 min, 5 min, 15 min]},
     "builds": [{"layer", "D", "d", "dtype", "seconds"}, ...],
     "results": [RESULT, ...],
     "sweep": null or {"d", "K", "m", "dtype", "threads",
                       "results": [RESULT, ...]},
     "plot": path of the PNG or null, "notes": [str]}

    RESULT = {"config": {"name", "D", "d", "K", "m"}, "dtype", "threads",
              "lr", "speedup_theory": D / (4 d),
              "measurements": {KEY: MEASUREMENT or null},
              "speedups": {"naive_online", "naive_batch", "torch_online",
                           "torch_batch": {"median", "min"} or null}}
    KEY = factored_online, factored_batch, naive_online, naive_batch,
          torch_online, torch_batch
    MEASUREMENT = {"layer", "mode", "examples_per_call", "calls", "warmup",
                   "few_repeats", "median_per_call", "min_per_call",
                   "median_per_example", "min_per_example", "times",
                   "blas_threads", "shared"[, "torch_threads"]}
    (times in seconds; "times": every timed call; "few_repeats": fewer
    timed calls than --repeats; "blas_threads": {library: threads} set
    when the measurement started; "shared": copied from the same
    measurement of another configuration, see above)

A speed-up is the ratio of the per-example medians (or minima) of the two
layers in the same mode; ``null`` where a layer was not measured.

Run ``python bench/bench_suite.py --help`` for the options; ``--quick`` runs
a small version (about 1.5 minutes on a 2-core VM);
the full suite takes about 15 minutes there.
"""
import argparse
import collections
import datetime
import gc
import json
import math
import os
import platform
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:           # bench_step is a script beside this one
    sys.path.insert(0, str(HERE))

import fastsparse  # noqa: E402
from _tools import cpu_model, environment_lines, git_revision  # noqa: E402

from fastsparse.datasets import ZipfTargets, default_lr, random_hidden  # noqa: E402
from fastsparse.utils import format_clock, format_table, format_time, status  # noqa: E402
from fastsparse._threads import IDLE_RESTORE  # noqa: E402

from bench_step import summarize, time_steps  # noqa: E402

SCHEMA = "fastsparse-bench-suite/1"

Config = collections.namedtuple("Config", "name D d K m")
Config.__doc__ = "One benchmark configuration: D outputs, d hidden, K targets, minibatch m."

#: The configurations of issue 5 (the paper's sizes and two smaller ones).
CONFIGS = [
    Config("1", 200_000, 500, 1, 1),
    Config("2", 793_471, 512, 1, 1),
    Config("3", 793_471, 512, 1, 128),
    Config("4", 100_000, 128, 1, 1),
    Config("5", 100_000, 128, 5, 32),
]
#: ``--quick``: the same shapes with D / 10 (D / (4 d) falls accordingly).
QUICK_CONFIGS = [c._replace(D=max(1, c.D // 10)) for c in CONFIGS]

#: The D sweep of the plot (float32, one BLAS thread, K = 1).
SWEEP_D = [10_000, 30_000, 100_000, 300_000, 793_471]
SWEEP_HIDDEN = 128
SWEEP_BATCH = 32
QUICK_SWEEP_D = [1_000, 3_000, 10_000, 30_000, 100_000]
QUICK_SWEEP_HIDDEN = 64

#: Defaults that --quick changes (option name -> (normal, quick)).
MODE_DEFAULTS = {
    "repeats": (20, 5),
    "warmup": (3, 1),
    "slow_budget": (4.0, 0.5),
    "slow_min_repeats": (3, 2),
    "sweep": (SWEEP_D, QUICK_SWEEP_D),
    "sweep_hidden": (SWEEP_HIDDEN, QUICK_SWEEP_HIDDEN),
}

LAYERS = ("factored", "naive", "torch")
MODES = ("online", "batch")


# ------------------------------------------------------------- command line
def _config_spec(text):
    """argparse type: a configuration number or ``D,d,K,m``."""
    text = text.strip()
    if text.isdigit() and "," not in text:
        return int(text)
    parts = text.replace("_", "").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a configuration number or D,d,K,m (four integers "
            f">= 1), got {text!r}")
    return Config(text, *values)


def _int_list(text):
    """argparse type: comma-separated integers >= 1."""
    try:
        values = [int(p) for p in text.replace("_", "").split(",") if p]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _thread_spec(text):
    """argparse type: ``all`` or an integer >= 1."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or an integer >= 1, got {text!r}")
    return value


def usable_cores():
    """Number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def parse_args(argv=None):
    """Parse the command line and fill in the defaults of the chosen mode.

    Parameters
    ----------
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    argparse.Namespace
        With ``configs`` a list of :class:`Config`, ``threads`` a list of
        distinct ints, ``json`` and ``plot`` paths (``plot`` None for no
        sweep and no plot).
    """
    table = "\n".join(f"  {c.name}: D={c.D:,} d={c.d} K={c.K} m={c.m}"
                      for c in CONFIGS)
    p = argparse.ArgumentParser(
        description=textwrap.fill(
            __doc__.split("\n\n")[0] + " Times the online and minibatch SGD "
            "step of FactoredOutputLayer, NaiveOutputLayer and a PyTorch "
            "nn.Linear at each configuration, dtype and thread setting, prints "
            "tables (stdout; progress on stderr), writes a JSON results file "
            "and a plot of time per example against D.", width=79),
        epilog=f"configurations:\n{table}\n(--quick: the same with D/10)\n\n"
               "Defaults marked (quick: X) change with --quick. See the "
               "module docstring for the JSON structure.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", type=_config_spec, metavar="C",
                   help="configurations to run: numbers of the table below, "
                        "or D,d,K,m (default: all five)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                   default=["float32", "float64"], help="default: both")
    p.add_argument("--threads", nargs="+", type=_thread_spec,
                   default=[1, "all"], metavar="N",
                   help="BLAS (and torch) thread settings: integers or 'all' "
                        "(the usable cores); default: 1 all")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast variant (D/10, small sweep, few repetitions)")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="timed calls per measurement (default 20; quick: 5); "
                        "at most this many for naive and torch")
    p.add_argument("--warmup", type=int, metavar="N",
                   help="untimed calls before the factored layer's timed ones "
                        "(default 3; quick: 1)")
    p.add_argument("--online-examples", type=int, default=8, metavar="M",
                   help="examples per online call of the factored layer when "
                        "m = 1 (default 8)")
    p.add_argument("--slow-budget", type=float, metavar="SECONDS",
                   help="seconds of timed calls per naive or torch measurement "
                        "(default 4; quick: 0.5)")
    p.add_argument("--slow-min-repeats", type=int, metavar="N",
                   help="fewest timed calls of naive and torch (default 3; quick: 2)")
    p.add_argument("--slow-warmup", type=int, default=1, metavar="N",
                   help="untimed calls of naive and torch (default 1)")
    p.add_argument("--slow-online-examples", type=int, default=2, metavar="M",
                   help="examples per online call of naive and torch (default 2)")
    p.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                   help="time NaiveOutputLayer (default: yes)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                   help="time the PyTorch dense layer when torch is installed "
                        "(default: yes)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="learning rate (||h|| = 1: r = 1 - 2 lr; default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    p.add_argument("--json", metavar="PATH",
                   help="results file (default bench/results/suite-<date>-<time>.json)")
    p.add_argument("--plot", metavar="PATH",
                   help="PNG of the D sweep (default: the JSON path with .png)")
    p.add_argument("--no-plot", dest="do_plot", action="store_false",
                   help="skip the D sweep and its plot")
    p.add_argument("--sweep", type=_int_list, metavar="D,D,...",
                   help="values of D of the sweep (default "
                        f"{','.join(map(str, SWEEP_D))}; quick: "
                        f"{','.join(map(str, QUICK_SWEEP_D))})")
    p.add_argument("--sweep-hidden", type=int, metavar="d",
                   help=f"d of the sweep (default {SWEEP_HIDDEN}; quick: "
                        f"{QUICK_SWEEP_HIDDEN})")
    p.add_argument("--sweep-batch", type=int, default=SWEEP_BATCH, metavar="m",
                   help=f"minibatch (and factored online call) size of the "
                        f"sweep (default {SWEEP_BATCH})")
    args = p.parse_args(argv)

    for name, (normal, quick) in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    table = QUICK_CONFIGS if args.quick else CONFIGS
    configs = []
    for spec in args.configs or range(1, len(table) + 1):
        if isinstance(spec, int):
            if not 1 <= spec <= len(table):
                p.error(f"--configs: no configuration {spec} (1..{len(table)})")
            spec = table[spec - 1]
        if spec not in configs:
            configs.append(spec)
    args.configs = configs
    threads = []
    for t in args.threads:
        n = usable_cores() if t == "all" else t
        if n not in threads:
            threads.append(n)
    args.threads = threads
    args.dtypes = list(dict.fromkeys(args.dtypes))
    for name in ("repeats", "online_examples", "slow_min_repeats",
                 "slow_online_examples", "sweep_hidden", "sweep_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.slow_warmup < 0:
        p.error("warm-up counts must be >= 0")
    if not (0 <= args.slow_budget < math.inf):
        p.error("--slow-budget must be finite and >= 0")
    if not (0 <= args.lr < math.inf):
        p.error("--lr must be finite and >= 0")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.json is None:
        args.json = str(HERE / "results" / f"suite-{stamp}.json")
    if not args.do_plot:
        args.plot = None
    elif args.plot is None:
        args.plot = str(Path(args.json).with_suffix(".png"))
    return args


# -------------------------------------------------------------- environment
def environment(torch=None):
    """The machine and the software, as a dict for the results file.

    Parameters
    ----------
    torch : module, optional
        The imported torch, if it is used (its version is recorded, and its
        threading libraries show in ``threadpool_info``).

    Returns
    -------
    dict
    """
    import scipy
    import threadpoolctl

    cpu = cpu_model()
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    try:
        import matplotlib
        mpl = matplotlib.__version__
    except ImportError:
        mpl = None
    rev = git_revision()
    return {
        "platform": platform.platform(),
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
        "ram_bytes": ram,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "threadpoolctl": threadpoolctl.__version__,
        "torch": None if torch is None else torch.__version__,
        "matplotlib": mpl,
        "fastsparse": fastsparse.__version__,
        "git_commit": rev.split()[0] if rev else "unknown",
        "git_dirty": None if rev is None else "uncommitted" in rev,
        "threadpool_info": threadpool_info(),
    }


def available_memory():
    """Bytes of memory available to new allocations (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _load_average():
    """The 1, 5 and 15 minute load averages, or None where unknown."""
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):  # pragma: no cover - not on Unix
        return None


def blas_threads():
    """The thread counts of the loaded BLAS libraries now, by file name."""
    return {os.path.basename(i.get("filepath", "?")): i.get("num_threads")
            for i in threadpool_info() if i.get("user_api") == "blas"}


# ---------------------------------------------------------------- the layers
class TorchDense:
    """The dense output layer as a PyTorch user writes it, with a ``step``.

    ``nn.Linear(d, D, bias=False)``; a step is ``optimizer.zero_grad()``
    (torch's default ``set_to_none=True``), the forward pass, the summed
    squared error on all D outputs against the dense target
    (``mse_loss(W h, y, reduction="sum")``, the loss of the fastsparse
    layers), ``backward()`` and ``torch.optim.SGD.step()``.

    Parameters
    ----------
    torch : module
    n_outputs, n_hidden : int
    dtype : numpy dtype
    seed : int
    lr : float
    """

    def __init__(self, torch, n_outputs, n_hidden, dtype, seed, lr):
        self._torch = torch
        self.dtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
        self.linear = torch.nn.utils.skip_init(
            torch.nn.Linear, n_hidden, n_outputs, bias=False, dtype=self.dtype)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, 1.0 / math.sqrt(n_hidden), generator=gen)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr)

    def step(self, H, targets, lr, mode="batch"):
        """One SGD step per example (online) or per minibatch (batch).

        Parameters
        ----------
        H : torch.Tensor of shape (m, d)
        targets : torch.Tensor of shape (m, D)
            The dense targets (see :func:`torch_data`).
        lr : float
        mode : {"online", "batch"}
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if mode == "online":
            for i in range(H.shape[0]):
                self._sgd(H[i:i + 1], targets[i:i + 1])
        else:
            self._sgd(H, targets)

    def _sgd(self, h, y):
        self.optimizer.zero_grad()
        loss = self._torch.nn.functional.mse_loss(self.linear(h), y, reduction="sum")
        loss.backward()
        self.optimizer.step()


def numpy_data(rng, zipf, d, K, dtype):
    """``data(m)`` for the fastsparse layers: unit-norm H and Zipf targets."""
    def data(m):
        return random_hidden(rng, m, d, dtype), zipf.sample(rng, m, K)
    return data


def torch_data(torch, rng, zipf, d, K, dtype):
    """``data(m)`` for :class:`TorchDense`: H and the dense (m, D) targets.

    The dense targets live in one buffer per m, reused: the previous
    call's non-zeros are cleared and the new ones added (repeated indices
    summed, as in the layers), all outside the timed region.
    """
    buffers = {}

    def data(m):
        H = random_hidden(rng, m, d, dtype)
        t = zipf.sample(rng, m, K)
        idx = (t if K == 1 else t[0]).reshape(m, -1)
        rows = np.repeat(np.arange(m), idx.shape[1])
        if m not in buffers:
            buffers[m] = (torch.zeros((m, zipf.n_outputs), dtype=torch.from_numpy(H).dtype),
                          None)
        Y, prev = buffers[m]
        Yn = Y.numpy()
        if prev is not None:
            Yn[prev] = 0
        np.add.at(Yn, (rows, idx.ravel()), 1)
        buffers[m] = (Y, (rows, idx.ravel()))
        return torch.from_numpy(H), Y
    return data


def layer_bytes(kind, D, d, m_max, dtype):
    """Rough peak memory of one layer and its largest step, in bytes."""
    item = np.dtype(dtype).itemsize
    dense = D * d * item
    outputs = m_max * D * item
    if kind == "torch":
        return 2 * dense + 5 * outputs      # W, its grad; y, o, o - y, grads
    return dense + 2 * outputs              # W (or V), outputs and their grads


class ThreadSetting:
    """Context manager: BLAS threads via threadpoolctl, torch's too.

    Parameters
    ----------
    n : int
    torch : module, optional
    """

    def __init__(self, n, torch=None):
        self.n = n
        self.torch = torch

    def __enter__(self):
        self._limits = threadpool_limits(limits=self.n)
        if self.torch is not None:
            self._torch_threads = self.torch.get_num_threads()
            self.torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.torch is not None:
            self.torch.set_num_threads(self._torch_threads)
        self._limits.restore_original_limits()
        return False


# ---------------------------------------------------------------- measuring
class Suite:
    """Runs the measurements and keeps their records.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`parse_args`.
    torch : module or None
        Torch, when its column is measured.
    on_progress : callable, optional
        Called after each layer is done (to save partial results).
    """

    def __init__(self, args, torch=None, on_progress=None):
        self.args = args
        self.torch = torch
        self.on_progress = on_progress or (lambda: None)
        self.kinds = ["factored"] + (["naive"] if args.naive else []) + \
                     (["torch"] if torch is not None else [])
        self.builds = []
        self.notes = []
        self.count = 0
        self.total = 0

    def plan(self, configs, dtypes, threads):
        """Count the measurements of a run (for the progress labels)."""
        self.total += len(configs) * len(dtypes) * len(threads) * len(self.kinds) * 2

    def lr(self, config):
        """The learning rate of a configuration: ``--lr``, lowered if needed
        for its minibatch step to stay far from singular (see
        :func:`fastsparse.datasets.default_lr`; never for the default ones)."""
        return min(self.args.lr, default_lr(config.m, config.d, "batch"))

    def online_call(self, kind, m):
        """Examples per online call of a layer for a configuration's m."""
        if kind == "factored":
            return m if m > 1 else self.args.online_examples
        return self.args.slow_online_examples

    def run(self, configs, dtypes, threads):
        """Measure every layer on the configurations.

        Layers are built once per (D, d, dtype), measured at every thread
        setting and configuration with that (D, d), then deleted.

        Parameters
        ----------
        configs : list of Config
        dtypes : list of str
        threads : list of int

        Returns
        -------
        list of dict
            RESULT records (see the module docstring), in the order of
            configs, then dtypes, then threads.
        """
        groups = collections.OrderedDict()
        for c in configs:
            groups.setdefault((c.D, c.d), []).append(c)
        found = {}
        for (D, d), group in groups.items():
            for dtype in dtypes:
                for kind in self.kinds:
                    found.update(self._run_layer(kind, D, d, np.dtype(dtype),
                                                 group, threads))
                    self.on_progress()
        results = []
        for c in configs:
            for dtype in dtypes:
                for n in threads:
                    meas = {f"{k}_{mode}": found.get((c, dtype, n, k, mode))
                            for k in LAYERS for mode in MODES}
                    results.append(result_record(c, dtype, n, self.lr(c), meas))
        return results

    def _run_layer(self, kind, D, d, dtype, group, threads):
        args = self.args
        out = {}
        n_meas = len(group) * len(threads) * 2
        m_max = max(c.m for c in group)
        need, avail = layer_bytes(kind, D, d, m_max, dtype), available_memory()
        if avail is not None and need > 0.9 * avail:
            note = (f"{kind} D={D} d={d} {dtype.name}: skipped, needs about "
                    f"{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available")
            self.notes.append(note)
            print(note, file=sys.stderr, flush=True)
            self.count += n_meas
            return out
        what = {"factored": "FactoredOutputLayer (random W, O(D d^2) Gram matrix)",
                "naive": "NaiveOutputLayer (random W)",
                "torch": "torch nn.Linear + SGD (random W)"}[kind]
        t0 = time.perf_counter()
        with status(f"building {what}, D={D:,} d={d} {dtype.name}"):
            if kind == "factored":
                layer = fastsparse.FactoredOutputLayer(D, d, dtype=dtype, seed=args.seed)
            elif kind == "naive":
                layer = fastsparse.NaiveOutputLayer(D, d, dtype=dtype, seed=args.seed)
            else:
                layer = TorchDense(self.torch, D, d, dtype, args.seed, args.lr)
        self.builds.append({"layer": kind, "D": D, "d": d, "dtype": dtype.name,
                            "seconds": time.perf_counter() - t0})
        zipf = ZipfTargets(D)
        slow = kind != "factored"
        try:
            for n in threads:
                if kind == "factored":
                    # with more than one thread, let the layer's BLAS-3 calls
                    # use them (by default it runs BLAS on one thread)
                    layer.single_thread_blas = n == 1
                with ThreadSetting(n, self.torch if kind == "torch" else None):
                    shared = {}
                    for c in group:
                        rng = np.random.default_rng(np.random.SeedSequence(
                            [args.seed, D, d, c.K, c.m, LAYERS.index(kind)]))
                        if kind == "torch":
                            data = torch_data(self.torch, rng, zipf, d, c.K, dtype)
                        else:
                            data = numpy_data(rng, zipf, d, c.K, dtype)
                        for mode in MODES:
                            self.count += 1
                            m = self.online_call(kind, c.m) if mode == "online" else c.m
                            key = (mode, c.K, m)
                            if slow and mode == "online" and key in shared:
                                rec = dict(shared[key], shared=True)
                            else:
                                rec = self._measure(layer, kind, mode, m, data, n, c,
                                                    dtype, slow)
                                shared[key] = rec
                            out[(c, dtype.name, n, kind, mode)] = rec
                if kind == "factored" and n == 1:
                    # the layer limited BLAS to one thread during its calls:
                    # let fastsparse restore the limits (after IDLE_RESTORE s
                    # without calls, see fastsparse._threads) before the next
                    # setting, or it would undo that setting's limits
                    time.sleep(4 * IDLE_RESTORE)
        finally:
            del layer
            if need > 1 << 28:
                gc.collect()        # slow with torch loaded: only for big layers
        return out

    def _measure(self, layer, kind, mode, m, data, n, c, dtype, slow):
        args = self.args
        label = (f"[{self.count}/{self.total}] {kind} {mode} D={c.D} d={c.d} "
                 f"K={c.K} m={c.m} {dtype.name} {n} thr")
        threads_now = blas_threads()
        if slow:
            warmup = args.slow_warmup
            times = time_steps(layer, data, m, mode, self.lr(c), warmup, args.repeats,
                               label, budget=args.slow_budget,
                               min_repeats=args.slow_min_repeats)
        else:
            warmup = args.warmup
            times = time_steps(layer, data, m, mode, self.lr(c), warmup, args.repeats,
                               label)
        rec = summarize(kind, mode, m, times)
        rec.update(warmup=warmup, few_repeats=len(times) < args.repeats,
                   blas_threads=threads_now, shared=False)
        if kind == "torch":
            rec["torch_threads"] = self.torch.get_num_threads()
        return rec


def result_record(config, dtype, threads, lr, measurements):
    """A RESULT record (see the module docstring), with the speed-ups.

    Parameters
    ----------
    config : Config
    dtype : str
    threads : int
    lr : float
    measurements : dict
        KEY -> MEASUREMENT or None.

    Returns
    -------
    dict
    """
    speedups = {}
    for other in ("naive", "torch"):
        for mode in MODES:
            fac, oth = measurements[f"factored_{mode}"], measurements[f"{other}_{mode}"]
            speedups[f"{other}_{mode}"] = None if fac is None or oth is None else {
                stat: oth[f"{stat}_per_example"] / fac[f"{stat}_per_example"]
                for stat in ("median", "min")}
    return {"config": config._asdict(), "dtype": dtype, "threads": threads,
            "lr": lr, "speedup_theory": config.D / (4 * config.d),
            "measurements": measurements, "speedups": speedups}


# ----------------------------------------------------------------- reporting
def _cell(meas, per="example"):
    if meas is None:
        return "-"
    text = format_time(meas[f"median_per_{'example' if per == 'example' else 'call'}"])
    return text + (" *" if meas["few_repeats"] else "")


def _ratio(speedup):
    return "-" if speedup is None else f"{speedup['median']:,.0f}x" \
        if speedup["median"] >= 10 else f"{speedup['median']:.2f}x"


def results_tables(results, dtypes, threads, n_cores):
    """The report's tables, one per (dtype, thread setting).

    Parameters
    ----------
    results : list of dict
        RESULT records.
    dtypes : list of str
    threads : list of int
    n_cores : int
        Usable cores (to label the "all cores" setting).

    Returns
    -------
    str
    """
    blocks = []
    for dtype in dtypes:
        for n in threads:
            rows = []
            for r in results:
                if r["dtype"] != dtype or r["threads"] != n:
                    continue
                c, meas, sp = r["config"], r["measurements"], r["speedups"]
                for mode in MODES:
                    first = mode == "online"
                    fac = meas[f"factored_{mode}"]
                    per = "example" if first else "call"
                    rows.append([
                        c["name"] if first else "",
                        f"{c['D']:,}" if first else "", c["d"] if first else "",
                        c["K"] if first else "", c["m"] if first else "",
                        "online, per example" if first else "batch, per minibatch",
                        fac["examples_per_call"] if fac else "-",
                        _cell(fac, per), _cell(meas[f"naive_{mode}"], per),
                        _ratio(sp[f"naive_{mode}"]),
                        _cell(meas[f"torch_{mode}"], per),
                        _ratio(sp[f"torch_{mode}"]),
                        f"{r['speedup_theory']:,.0f}x" if first else ""])
            if not rows:
                continue
            label = f"{n} BLAS thread{'s' if n > 1 else ''}"
            if n == n_cores and n > 1:
                label += " (all cores)"
            blocks.append(f"{dtype}, {label}\n" + format_table(
                ["#", "D", "d", "K", "m", "step", "m/call", "factored", "naive",
                 "naive/fact", "torch", "torch/fact", "D/(4d)"], rows,
                "<>>>><>>>>>>>"))
    return "\n\n".join(blocks)


def builds_table(builds):
    """The construction times (not part of the step times) as a table."""
    by = collections.OrderedDict()
    for b in builds:
        by.setdefault((b["D"], b["d"], b["dtype"]), {})[b["layer"]] = b["seconds"]
    rows = [[f"{D:,}", d, dtype] + [format_time(t[k]) if k in t else "-" for k in LAYERS]
            for (D, d, dtype), t in by.items()]
    return ("construction of the layers (random weights; factored: plus the "
            "O(D d^2) Gram matrix), not part of the step times\n"
            + format_table(["D", "d", "dtype"] + list(LAYERS), rows))


def sweep_table(sweep):
    """The D sweep as a table of times per example."""
    rows = []
    for r in sweep["results"]:
        meas = r["measurements"]
        rows.append([f"{r['config']['D']:,}"]
                    + [_cell(meas[f"{k}_{mode}"]) for k in LAYERS for mode in MODES]
                    + [_ratio(r["speedups"]["naive_online"]),
                       _ratio(r["speedups"]["naive_batch"]),
                       f"{r['speedup_theory']:,.1f}x"])
    head = ["D"] + [f"{k} {mode}" for k in LAYERS for mode in MODES] + [
        "naive/fact online", "naive/fact batch", "D/(4d)"]
    return (f"D sweep: time per example, d={sweep['d']}, K={sweep['K']}, "
            f"minibatch m={sweep['m']} (factored online: calls of {sweep['m']}), "
            f"{sweep['dtype']}, {sweep['threads']} BLAS thread\n"
            + format_table(head, rows))


def make_plot(sweep, path, env):
    """Log-log plot of the sweep's time per example against D.

    Parameters
    ----------
    sweep : dict
        The ``"sweep"`` entry of the results.
    path : str
        PNG file to write.
    env : dict
        From :func:`environment` (for the caption).

    Returns
    -------
    str
        ``path``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"factored": "C0", "naive": "C3", "torch": "C2"}
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for kind in LAYERS:
        for mode, style in (("online", "-o"), ("batch", "--s")):
            pts = [(r["config"]["D"], r["measurements"][f"{kind}_{mode}"])
                   for r in sweep["results"]]
            pts = [(D, m["median_per_example"]) for D, m in pts if m is not None]
            if not pts:
                continue
            name = {"factored": "factored (fastsparse)", "naive": "naive dense",
                    "torch": "torch nn.Linear + SGD"}[kind]
            what = "online" if mode == "online" else f"minibatch of {sweep['m']}"
            ax.plot(*zip(*pts), style, color=colors[kind], label=f"{name}, {what}",
                    markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D (number of outputs)")
    ax.set_ylabel("time per example (s), median")
    ax.set_title(f"SGD step of the output layer: d = {sweep['d']}, K = {sweep['K']}, "
                 f"{sweep['dtype']}, {sweep['threads']} BLAS thread", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    last = sweep["results"][-1]
    speed = [f"{_ratio(last['speedups'][f'naive_{mode}'])} {mode}" for mode in MODES
             if last["speedups"][f"naive_{mode}"] is not None]
    title = f"at D = {last['config']['D']:,}: D/(4d) = {last['speedup_theory']:,.0f}"
    if speed:
        title += ",\nnaive/factored measured " + ", ".join(speed)
    ax.legend(fontsize=8, title=title, title_fontsize=8)
    fig.text(0.01, 0.01, f"fastsparse {env['fastsparse']} ({env['git_commit'][:10]}), "
             f"{env['cpu_model']}", fontsize=6, alpha=0.7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _jsonable(obj):
    """Options and records as JSON values (Config tuples as dicts)."""
    if isinstance(obj, Config):
        return obj._asdict()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def write_json(path, record):
    """Write the results file atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(record), f, indent=1)
    os.replace(tmp, path)


# --------------------------------------------------------------------- main
def main(argv=None):
    """Run the suite, print the report and write the results.

    Parameters
    ----------
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status.
    """
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone()
    t_start = time.perf_counter()

    def emit(text=""):
        print(text, flush=True)

    early = []          # what is left out, and why
    torch = None
    if args.torch:
        try:
            import torch
        except ImportError:
            early.append("torch is not installed: no torch column "
                         "(pip install torch==2.13.0, the 'torch' extra).")
    plot_ok = args.plot is not None
    if plot_ok:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plot_ok = False
            early.append("matplotlib is not installed: no D sweep and no plot "
                         "(pip install matplotlib, or the 'plot' extra).")
    for note in early:
        print(note, file=sys.stderr, flush=True)

    env = environment(torch)
    load_start = _load_average()
    env_lines = environment_lines() + [
        ("RAM", f"{env['ram_bytes'] / 2**30:.1f} GiB" if env["ram_bytes"] else "?"),
        ("torch", f"{env['torch']} ({torch.get_num_threads()} threads by default)"
         if torch is not None else "not used"),
        ("threadpoolctl / matplotlib", f"{env['threadpoolctl']} / "
                                       f"{env['matplotlib'] or 'not installed'}"),
        ("date", started.isoformat(timespec="seconds")),
        ("load average at start", "unknown" if load_start is None else
         " / ".join(f"{x:.2f}" for x in load_start) + " (1 / 5 / 15 min)"),
    ]
    n_cores = usable_cores()
    emit("fastsparse benchmark suite" + (" (--quick)" if args.quick else ""))
    emit()
    emit(format_table(["machine and software", ""], env_lines, "<<"))
    emit()
    emit(format_table(["#", "D", "d", "K", "m", "D/(4d)"],
                      [[c.name, f"{c.D:,}", c.d, c.K, c.m, f"{c.D / (4 * c.d):,.1f}"]
                       for c in args.configs]))
    emit()
    plan = [
        ("dtypes", ", ".join(args.dtypes)),
        ("BLAS threads", ", ".join(f"{n}" + (" (all cores)" if n == n_cores else "")
                                   for n in args.threads)),
        ("layers", ", ".join(["factored"] + (["naive"] if args.naive else [])
                             + (["torch"] if torch is not None else []))),
        ("factored", f"{args.warmup} warm-up + {args.repeats} timed calls; online: "
                     f"calls of m examples ({args.online_examples} when m = 1)"),
        ("naive, torch", f"{args.slow_warmup} warm-up call, then as many timed "
                         f"calls as fit in {args.slow_budget:g} s "
                         f"({args.slow_min_repeats} to {args.repeats}); online: "
                         f"calls of {args.slow_online_examples} examples"),
        ("learning rate", f"{args.lr:g} (||h|| = 1; lowered where a minibatch "
                          f"step would be near singular), seed {args.seed}"),
        ("D sweep", (f"D = {', '.join(f'{D:,}' for D in args.sweep)}, "
                     f"d = {args.sweep_hidden}, m = {args.sweep_batch}, float32, "
                     f"1 thread") if plot_ok else "no"),
        ("results file", args.json),
    ]
    emit(format_table(["plan", ""], plan, "<<"))
    emit()

    record = {"schema": SCHEMA, "complete": False,
              "started": started.isoformat(timespec="seconds"), "finished": None,
              "elapsed_seconds": None, "command": [sys.argv[0]] + list(
                  sys.argv[1:] if argv is None else argv),
              "options": vars(args), "environment": env,
              "environment_lines": [list(x) for x in env_lines],
              "load_average": {"start": load_start, "end": None},
              "builds": [], "results": [], "sweep": None, "plot": None,
              "notes": list(early)}
    suite = Suite(args, torch)

    def save():
        record["builds"] = suite.builds
        record["elapsed_seconds"] = time.perf_counter() - t_start
        write_json(args.json, record)

    suite.on_progress = save
    sweep_configs = [Config(f"D={D}", D, args.sweep_hidden, 1, args.sweep_batch)
                     for D in args.sweep] if plot_ok else []
    suite.plan(args.configs, args.dtypes, args.threads)
    suite.plan(sweep_configs, ["float32"], [1])

    record["results"] = suite.run(args.configs, args.dtypes, args.threads)
    save()
    if plot_ok:
        record["sweep"] = {"d": args.sweep_hidden, "K": 1, "m": args.sweep_batch,
                           "dtype": "float32", "threads": 1,
                           "results": suite.run(sweep_configs, ["float32"], [1])}
        save()

    emit(results_tables(record["results"], args.dtypes, args.threads, n_cores))
    emit()
    if record["sweep"] is not None:
        emit(sweep_table(record["sweep"]))
        emit()
    emit(builds_table(suite.builds))
    emit()
    few = [m for r in record["results"] + (record["sweep"] or {}).get("results", [])
           for m in r["measurements"].values() if m is not None and m["few_repeats"]]
    notes = [
        "Times are medians: 'online, per example' rows are per example "
        "(factored: calls of 'm/call' examples, one exact update each); 'batch, "
        "per minibatch' rows are per call of m examples (one update with the "
        "summed gradient). Speed-ups are ratios of medians measured in this "
        "run; D/(4d) is the paper's estimate.",
        "For m = 1 the minibatch step is the online update: its row is one "
        "mode='batch' call of one example, per-call overhead included.",
        f"Naive and torch online: calls of {args.slow_online_examples} examples; "
        "their online time per example does not depend on m, so it is measured "
        "once and shared by configurations differing only in m.",
        "Factored layer: with one thread, its default single_thread_blas=True; "
        "with more, single_thread_blas=False, so that its BLAS-3 calls (blocked "
        "online kernel, minibatch) use them.",
    ]
    if few:
        calls = sorted({m["calls"] for m in few})
        notes.insert(1, f"* naive and torch are slow (O(D d) per example): these "
                        f"cells are timed over only {calls[0]}"
                        + (f" to {calls[-1]}" if len(calls) > 1 else "")
                        + f" call(s) (budget {args.slow_budget:g} s per "
                        "measurement, after one warm-up call), so they are less "
                        "precise than the factored layer's.")
    if load_start is not None and load_start[0] > 0.5:
        notes.append(f"The machine was busy when the run started (load average "
                     f"{load_start[0]:.2f} over the last minute): other processes "
                     "shared the cores, so the timings, the multi-threaded ones "
                     "especially, are less reliable.")
    notes += suite.notes + early
    record["notes"] = notes
    if plot_ok:
        with status(f"writing the plot {args.plot}"):
            record["plot"] = make_plot(record["sweep"], args.plot, env)
    record["load_average"]["end"] = _load_average()
    record["complete"] = True
    record["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    save()
    for note in notes:
        emit(textwrap.fill(note, width=79))
    emit()
    emit(f"results written to {args.json}"
         + (f", plot to {args.plot}" if record["plot"] else ""))
    emit(f"total time {format_clock(time.perf_counter() - t_start)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
