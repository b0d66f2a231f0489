"""The price of exactness on repetitive data, at scale.

Trains one FactoredOutputLayer online (calls of ``--calls-of`` examples)
on two streams of the same length and times every call, including every
corrective action of the numerical-health control (docs/algorithm.md §4,
§5):

* ``text``: tokens i.i.d. Zipf(``--zipf``) over the D outputs, h the sum of
  fixed random embeddings (N(0, 1/(3d))) of the 3 previous tokens, target
  the token: frequent contexts repeat exactly, as in text, and SGD shrinks
  W along them at every step;
* ``random``: unit-norm Gaussian h (no repetition), Zipf targets.

Prints the time per example of each stream, the control's share and its
actions (checks, renormalisations: passes over V, near-singular updates:
passes over V, inverse refreshes), for the knobs given (``--max-cond``,
``--min-abs-r``), so that the trade-off between precision and speed can be
read off at the user's size.  Nothing is asserted.

    python bench/bench_control_cost.py                      # D = 793 471, d = 512
    python bench/bench_control_cost.py --n-outputs 100000 --examples 5000
"""
import argparse
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastsparse
from _tools import environment_lines

from fastsparse.utils import format_table, format_time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-outputs", type=int, default=793_471, metavar="D")
    p.add_argument("--n-hidden", type=int, default=512, metavar="d")
    p.add_argument("--examples", type=int, default=20_000)
    p.add_argument("--calls-of", type=int, default=64, metavar="M",
                   help="examples per online call")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads")
    p.add_argument("--max-cond", type=float, default=None,
                   help="stability knob max_cond (default: the layer's)")
    p.add_argument("--min-abs-r", type=float, default=None,
                   help="stability knob min_abs_r (default: the layer's)")
    p.add_argument("--streams", default="text,random",
                   help="comma-separated: text, random")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def text_calls(D, d, m, n_calls, zipf, rng, dtype):
    """Calls (H, targets) of the text-like stream."""
    p = 1.0 / np.arange(1, D + 1) ** zipf
    p /= p.sum()
    ids = rng.choice(D, size=n_calls * m + 3, p=p)
    used = np.unique(ids)
    E = np.zeros((D, d), dtype=np.float32)          # only the rows used
    E[used] = rng.standard_normal((used.size, d), dtype=np.float32) / np.sqrt(3 * d)
    for c in range(n_calls):
        pos = np.arange(3 + c * m, 3 + (c + 1) * m)
        H = (E[ids[pos - 1]] + E[ids[pos - 2]] + E[ids[pos - 3]]).astype(dtype)
        yield H, ids[pos]


def random_calls(D, d, m, n_calls, zipf, rng, dtype):
    p = 1.0 / np.arange(1, D + 1) ** zipf
    p /= p.sum()
    for _ in range(n_calls):
        H = rng.standard_normal((m, d)).astype(dtype)
        H /= np.linalg.norm(H, axis=1, keepdims=True)
        yield H, rng.choice(D, size=m, p=p)


def run(args, stream):
    dtype = np.dtype(args.dtype)
    knobs = {k: v for k, v in (("max_cond", args.max_cond),
                               ("min_abs_r", args.min_abs_r)) if v is not None}
    rng = np.random.default_rng(args.seed)
    layer = fastsparse.FactoredOutputLayer(args.n_outputs, args.n_hidden,
                                           dtype=dtype, seed=args.seed,
                                           init_scale=0.01, stability=knobs)
    n_calls = args.examples // args.calls_of
    make = text_calls if stream == "text" else random_calls
    calls = list(make(args.n_outputs, args.n_hidden, args.calls_of, n_calls,
                      args.zipf, rng, dtype))
    times = []
    for H, t in calls:
        t0 = time.perf_counter()
        layer.step(H, t, args.lr, mode="online")
        times.append(time.perf_counter() - t0)
    h = layer.health()
    n = n_calls * args.calls_of
    return {"stream": stream, "per_example": sum(times) / n,
            "median_call": float(np.median(times)) / args.calls_of,
            "control": h["control_seconds"] / n, "health": h, "examples": n}


def main(argv=None):
    args = parse_args(argv)
    print(f"# Cost of the numerical-health control, D = {args.n_outputs}, "
          f"d = {args.n_hidden}, {args.dtype}, online calls of {args.calls_of}, "
          f"lr {args.lr}, {args.examples} examples per stream")
    for line in environment_lines():
        print(f"# {line}")
    rows = []
    with threadpool_limits(args.threads):
        for stream in args.streams.split(","):
            print(f"# running the {stream} stream ...", file=sys.stderr, flush=True)
            r = run(args, stream)
            h = r["health"]
            rows.append([stream, format_time(r["per_example"]),
                         format_time(r["median_call"]),
                         format_time(r["control"]),
                         f"{100 * r['control'] / r['per_example']:.0f} %",
                         h["n_checks"], h["n_renormalizations"],
                         h["n_near_singular_updates"], h["n_inverse_refreshes"],
                         f"{h['cond']:.3g}"])
    print(format_table(["stream", "per example (all in)", "per example (median call)",
                        "control per example", "control share", "checks",
                        "renormalisations", "near-singular passes",
                        "inverse refreshes", "cond(U) at end"], rows))


if __name__ == "__main__":
    main()
