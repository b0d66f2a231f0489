"""Benchmark of the step of the factored (and the naive) output layer.

Measures, at one size (default D = 793471, d = 512, the paper's largest
vocabulary), K-sparse targets, one BLAS thread:

* the online step of :class:`fastsparse.FactoredOutputLayer`, per example,
  over calls of ``--online-examples`` examples (so that the per-call Python
  overhead is amortised);
* its minibatch step (``mode="batch"``) per minibatch of ``--batch-size``;
* optionally (``--naive``, the default) the same for
  :class:`fastsparse.NaiveOutputLayer`, with few repetitions because each
  example costs O(D d), and the speed-up measured in the same run beside the
  paper's estimate D / (4 d).

Every timed call gets fresh data (generated outside the timed region):
unit-norm random h and Zipf-distributed targets.  Median and minimum over
the repetitions are reported, after warm-up calls.

Run ``python bench/bench_step.py --help`` for the options.
"""
import argparse
import json
import statistics
import sys
import textwrap
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastsparse
from _tools import environment_lines

from fastsparse.datasets import ZipfTargets, random_hidden
from fastsparse.utils import ProgressBar, format_table, format_time, status


def parse_args(argv=None):
    """Parse the command line.

    Parameters
    ----------
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    argparse.Namespace
    """
    p = argparse.ArgumentParser(
        description="Time the online and minibatch step of FactoredOutputLayer "
                    "(and, for the speed-up, of NaiveOutputLayer) at one size. "
                    "The report goes to stdout, progress to stderr.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-outputs", type=int, default=793_471, metavar="D",
                   help="number of outputs")
    p.add_argument("--n-hidden", type=int, default=512, metavar="d",
                   help="number of hidden units")
    p.add_argument("--n-targets", type=int, default=1, metavar="K",
                   help="non-zero targets per example (Zipf-distributed)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of the layers")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (threadpoolctl)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="learning rate; h has norm 1, so r = 1 - 2 lr")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights and of the data")
    p.add_argument("--online-examples", type=int, default=64, metavar="M",
                   help="examples per online step call of the factored layer")
    p.add_argument("--batch-size", type=int, default=128, metavar="M",
                   help="examples per minibatch step (mode='batch')")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls before the factored layer's timed ones")
    p.add_argument("--repeats", type=int, default=20,
                   help="timed calls of the factored layer, per mode")
    p.add_argument("--naive", action=argparse.BooleanOptionalAction,
                   default=True, help="also time the naive layer (slow)")
    p.add_argument("--naive-online-examples", type=int, default=4, metavar="M",
                   help="examples per online step call of the naive layer")
    p.add_argument("--naive-warmup", type=int, default=1,
                   help="untimed calls of the naive layer, per mode")
    p.add_argument("--naive-repeats", type=int, default=3,
                   help="timed calls of the naive layer, per mode")
    p.add_argument("--json", metavar="PATH",
                   help="also write the configuration and results as JSON")
    args = p.parse_args(argv)
    for name in ("n_outputs", "n_hidden", "n_targets", "threads",
                 "online_examples", "batch_size", "repeats",
                 "naive_online_examples", "naive_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.naive_warmup < 0:
        p.error("warm-up counts must be >= 0")
    if not (0 <= args.lr < float("inf")):
        p.error("--lr must be finite and >= 0")
    return args


def time_steps(layer, data, m, mode, lr, warmup, repeats, label, *,
               budget=None, min_repeats=1):
    """Time ``layer.step`` over fresh minibatches.

    Parameters
    ----------
    layer : object
        A :class:`~fastsparse.FactoredOutputLayer`,
        :class:`~fastsparse.NaiveOutputLayer` or anything with the same
        ``step(H, targets, lr, mode=mode)`` method.
    data : callable
        ``data(m)`` returns ``(H, targets)`` for m examples (called outside
        the timed region).
    m : int
        Examples per call.
    mode : {"online", "batch"}
    lr : float
    warmup, repeats : int
        Untimed and timed calls.
    label : str
        Label of the progress bar.
    budget : float, optional
        Seconds to spend on the timed calls, for slow layers: the number of
        timed calls becomes ``budget / t`` (``t``: the duration of the last
        warm-up call, or of the first timed call without warm-up), clipped
        to ``[min_repeats, repeats]``.  Default: always ``repeats`` calls.
    min_repeats : int, default 1
        Fewest timed calls when ``budget`` is given.

    Returns
    -------
    list of float
        Seconds per timed call (only the ``step`` call is timed).
    """
    times = []
    n_timed = repeats
    i = 0
    with ProgressBar(warmup + repeats, label, unit="calls") as bar:
        while i < warmup + n_timed:
            H, targets = data(m)
            t0 = time.perf_counter()
            layer.step(H, targets, lr, mode=mode)
            t1 = time.perf_counter()
            if i >= warmup:
                times.append(t1 - t0)
            if budget is not None and i == max(warmup - 1, 0):
                n_timed = int(min(repeats, max(min_repeats,
                                              budget // max(t1 - t0, 1e-9))))
                bar.total = warmup + n_timed
            i += 1
            bar.update()
    return times


def summarize(layer, mode, m, times):
    """One result record: per call and per example, median and minimum."""
    med, best = statistics.median(times), min(times)
    return {"layer": layer, "mode": mode, "examples_per_call": m,
            "calls": len(times), "median_per_call": med, "min_per_call": best,
            "median_per_example": med / m, "min_per_example": best / m,
            "times": times}


def main(argv=None):
    """Run the benchmark and print the report.

    Parameters
    ----------
    argv : list of str, optional

    Returns
    -------
    int
        Exit status.
    """
    args = parse_args(argv)
    dtype = np.dtype(args.dtype)
    D, d, K = args.n_outputs, args.n_hidden, args.n_targets
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 2]))
    zipf = ZipfTargets(D)

    def data(m):
        return random_hidden(rng, m, d, dtype), zipf.sample(rng, m, K)

    def emit(text=""):
        print(text, flush=True)

    results = []
    build_times = {}
    with threadpool_limits(limits=args.threads):
        env = environment_lines()
        emit("fastsparse step benchmark")
        emit()
        emit(format_table(["machine and software", ""], env, "<<"))
        emit()
        config = [
            ("outputs D", f"{D:,}"),
            ("hidden d", f"{d}"),
            ("targets per example K", f"{K} (Zipf(1) over D), target values 1"),
            ("dtype", dtype.name),
            ("BLAS threads", f"{args.threads}"),
            ("learning rate", f"{args.lr:g} (||h|| = 1, r = 1 - 2 lr = "
                              f"{1 - 2 * args.lr:g})"),
            ("factored", f"online: {args.repeats} calls of {args.online_examples} "
                         f"examples; batch: {args.repeats} minibatches of "
                         f"{args.batch_size}; {args.warmup} warm-up calls each"),
            ("naive", (f"online: {args.naive_repeats} calls of "
                       f"{args.naive_online_examples} examples; batch: "
                       f"{args.naive_repeats} minibatches of {args.batch_size}; "
                       f"{args.naive_warmup} warm-up call(s) each")
             if args.naive else "not measured (--no-naive)"),
            ("seed", f"{args.seed}"),
        ]
        emit(format_table(["configuration", ""], config, "<<"))
        emit()

        t0 = time.perf_counter()
        with status(f"building FactoredOutputLayer({D}, {d}) (random W, "
                    f"O(D d^2) Gram matrix)"):
            layer = fastsparse.FactoredOutputLayer(D, d, dtype=dtype, seed=args.seed)
        build_times["factored"] = time.perf_counter() - t0
        m = args.online_examples
        results.append(summarize("factored", "online", m, time_steps(
            layer, data, m, "online", args.lr, args.warmup, args.repeats,
            "factored online")))
        m = args.batch_size
        results.append(summarize("factored", "batch", m, time_steps(
            layer, data, m, "batch", args.lr, args.warmup, args.repeats,
            "factored batch ")))
        del layer

        if args.naive:
            t0 = time.perf_counter()
            with status(f"building NaiveOutputLayer({D}, {d})"):
                layer = fastsparse.NaiveOutputLayer(D, d, dtype=dtype, seed=args.seed)
            build_times["naive"] = time.perf_counter() - t0
            m = args.naive_online_examples
            results.append(summarize("naive", "online", m, time_steps(
                layer, data, m, "online", args.lr, args.naive_warmup,
                args.naive_repeats, "naive online   ")))
            m = args.batch_size
            results.append(summarize("naive", "batch", m, time_steps(
                layer, data, m, "batch", args.lr, args.naive_warmup,
                args.naive_repeats, "naive batch    ")))
            del layer

    rows = [[r["layer"], r["mode"], r["examples_per_call"], r["calls"],
             format_time(r["median_per_call"]), format_time(r["min_per_call"]),
             format_time(r["median_per_example"]), format_time(r["min_per_example"])]
            for r in results]
    emit(format_table(["layer", "mode", "m/call", "calls", "median/call",
                       "min/call", "median/example", "min/example"], rows,
                      "<<>>>>>>"))
    emit()
    emit("construction: " + ", ".join(f"{k} {format_time(v)}"
                                      for k, v in build_times.items()))
    theory = D / (4 * d)
    speedups = {}
    if args.naive:
        by = {(r["layer"], r["mode"]): r for r in results}
        srows = []
        for mode in ("online", "batch"):
            fac, nai = by["factored", mode], by["naive", mode]
            med = nai["median_per_example"] / fac["median_per_example"]
            best = nai["min_per_example"] / fac["min_per_example"]
            speedups[mode] = {"median": med, "min": best}
            srows.append([f"naive/factored, {mode} (per example)",
                          f"{med:.1f}x", f"{best:.1f}x"])
        srows.append(["D/(4d), paper's estimate", f"{theory:.1f}x", ""])
        emit()
        emit(format_table(["speed-up", "median", "min"], srows))
        emit()
        emit(textwrap.fill(
            f"The naive layer is timed over only {args.naive_repeats} call(s) "
            "per mode (it is slow), so its numbers and the speed-ups are "
            "less precise than the factored layer's.", width=79))
    else:
        emit(f"D/(4d), the paper's speed-up estimate: {theory:.1f}x")

    if args.json:
        record = {"config": vars(args), "environment": [list(item) for item in env],
                  "build_times": build_times, "results": results,
                  "speedups": speedups, "speedup_theory": theory}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        emit(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
