"""What the spherical losses and the numerical-health control cost.

At one size (default D = 793471, d = 512, float32, one BLAS thread), for
each built-in loss, times the online step of
:class:`fastsparse.FactoredOutputLayer` per example over a long run (calls
of ``--online-examples`` examples; default 20 000 examples), with the
automatic numerical-health control on, and for squared error also with it
off: the difference is the control's amortised overhead, reported with the
counts of its corrective actions.  Times are ratios measured in one run.

Data: unit-norm random h (``r = 1 - 2 lr dL/dq``) and Zipf-distributed
targets, as in ``bench/bench_step.py``.  Run with ``--help`` for options.
"""
import argparse
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastsparse
from _tools import environment_lines

from fastsparse.datasets import ZipfTargets, random_hidden
from fastsparse.utils import ProgressBar, format_table, format_time, status

LOSSES = ["squared", "spherical_softmax", "taylor_softmax", "z_loss"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-outputs", type=int, default=793_471, metavar="D")
    p.add_argument("--n-hidden", type=int, default=512, metavar="d")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--examples", type=int, default=20_000,
                   help="examples trained per configuration")
    p.add_argument("--online-examples", type=int, default=64, metavar="M",
                   help="examples per online step call")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.n_outputs, args.n_hidden, args.examples, args.online_examples) < 1:
        p.error("sizes must be >= 1")
    return args


def run(layer, args, label):
    """Train ``args.examples`` online; return seconds per example."""
    rng = np.random.default_rng(args.seed + 1)
    zipf = ZipfTargets(layer.n_outputs)
    m = args.online_examples
    calls = max(1, args.examples // m)
    total = 0.0
    bar = ProgressBar(calls, label)
    for _ in range(calls):
        H = random_hidden(rng, m, layer.n_hidden, layer.dtype)
        t = zipf.sample(rng, m)
        t0 = time.perf_counter()
        layer.step(H, t, args.lr, mode="online")
        total += time.perf_counter() - t0
        bar.update()
    bar.close()
    return total / (calls * m)


def main(argv=None):
    args = parse_args(argv)
    D, d = args.n_outputs, args.n_hidden
    print("fastsparse: cost of the losses and of the numerical-health control\n")
    rows, health_rows = [], []
    with threadpool_limits(1):
        print(format_table(["machine and software", ""], environment_lines(), "<<"))
        print(f"\nD = {D:,}, d = {d}, {args.dtype}, one BLAS thread, lr = {args.lr}, "
              f"{args.examples} examples per configuration in online calls of "
              f"{args.online_examples}\n", flush=True)
        W0 = None
        per_example = {}
        configs = [(loss, True) for loss in args.losses]
        if "squared" in args.losses:
            configs.insert(1, ("squared", False))
        for loss, control in configs:
            with status(f"building the layer (loss={loss}, control "
                        f"{'on' if control else 'off'})"):
                if W0 is None:
                    W0 = fastsparse.NaiveOutputLayer(D, d, dtype=args.dtype,
                                                     seed=args.seed).weights()
                layer = fastsparse.FactoredOutputLayer.from_weights(
                    W0, loss=loss, stability=None if control else False)
            sec = run(layer, args, f"{loss}, control {'on' if control else 'off'}")
            per_example[loss, control] = sec
            rows.append([loss, "on" if control else "off", format_time(sec)])
            if control:
                h = layer.health()
                health_rows.append([loss, h["n_checks"], h["n_inverse_refreshes"],
                                    h["n_renormalizations"], h["n_rescales"],
                                    h["n_refactorizations"],
                                    f"{h['cond']:.3g}",
                                    format_time(h["control_seconds"] / h["steps"])])
            del layer
    base = per_example.get(("squared", True))
    for row in rows:
        sec = per_example[row[0], row[1] == "on"]
        row.append(f"{sec / base:.3f}" if base else "")
    print(format_table(["loss", "control", "online step / example",
                        "vs squared (control on)"], rows, "<<>>"))
    print()
    print(format_table(["loss", "checks", "inverse refreshes", "renormalisations",
                        "rescales", "refactorisations", "cond(U) at end",
                        "control time / example"], health_rows, "<>>>>>>>"))
    if ("squared", False) in per_example and base:
        off = per_example["squared", False]
        print(f"\ncontrol overhead (squared error): {100 * (base / off - 1):.1f} % "
              "of a step (time with control / time without - 1, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
