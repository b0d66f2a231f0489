"""Throughput of factored layers trained from several threads.

One thread trains one layer, then two threads each train their own layer
(same size, same work each); prints the examples per second of each setup
and their ratio measured in one run (ideal: the number of threads, on as
many cores).  The kernels release the GIL, so the layers run in parallel.
The default d = 128 keeps each layer's d x d state (U, its inverse, M) in
a core's L2 cache; at d = 256 on this 2-core VM (512 KiB L2 per core) each
step streams its state from the shared L3 and two threads measured 0.96x:
the step is then bandwidth-bound, and more threads cannot help.

Run ``python bench/bench_threads.py --help`` for the options.
"""
import argparse
import sys
import threading
import time

import numpy as np

import fastsparse
from _tools import environment_lines

from fastsparse.datasets import ZipfTargets, random_hidden
from fastsparse.utils import format_table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-outputs", type=int, default=200_000, metavar="D")
    p.add_argument("--n-hidden", type=int, default=128, metavar="d")
    p.add_argument("--examples", type=int, default=8192,
                   help="examples trained by each thread")
    p.add_argument("--online-examples", type=int, default=64, metavar="M")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    D, d, m = args.n_outputs, args.n_hidden, args.online_examples
    calls = max(1, args.examples // m)
    zipf = ZipfTargets(D)

    def make_data(seed):
        rng = np.random.default_rng(seed)
        return [(random_hidden(rng, m, d, np.float32), zipf.sample(rng, m))
                for _ in range(calls)]

    def train(layer, data):
        for H, t in data:
            layer.step(H, t, 0.01, mode="online")

    print(format_table(["machine and software", ""], environment_lines(), "<<"))
    n = args.threads
    layers = [fastsparse.FactoredOutputLayer(D, d, seed=i) for i in range(n)]
    data = [make_data(i) for i in range(n)]
    train(layers[0], data[0][:4])                       # warm-up
    t0 = time.perf_counter()
    train(layers[0], data[0])
    one = calls * m / (time.perf_counter() - t0)
    threads = [threading.Thread(target=train, args=(layers[i], data[i]))
               for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    many = n * calls * m / (time.perf_counter() - t0)
    print(f"\nD = {D:,}, d = {d}, float32, online calls of {m}, "
          f"{calls * m} examples per thread\n")
    print(format_table(["setup", "examples / s"],
                       [["1 thread, 1 layer", f"{one:,.0f}"],
                        [f"{n} threads, 1 layer each", f"{many:,.0f}"]], "<>"))
    print(f"\nthroughput ratio {n} threads / 1 thread: {many / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
