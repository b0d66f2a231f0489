"""Data-parallel output layer: fastsparse.distributed against DDP on a dense layer.

One run, 2 processes on 127.0.0.1 (gloo), spawned by this script, at one
size (default D = 200 000, d = 256, m = 128 examples per rank, float32,
K = 1, spherical softmax):

1. **factored**: :class:`fastsparse.distributed.DistributedFactoredOutput`
   (batch mode, then online mode) trains a replicated
   :class:`fastsparse.FactoredOutputLayer`: per step, each rank sends a
   header and its minibatch (h, target, dL/da, dL/dq) and every replica
   applies the update of the global minibatch (2 m examples).
2. **dense**: a ``torch.nn.Linear(d, D)`` output layer wrapped in
   ``DistributedDataParallel`` with the same loss written on all D outputs
   and ``torch.optim.SGD``: DDP all-reduces the D x (d + 1) gradient every
   step.  Timed with DDP's all-reduce and without it (``no_sync()``), and
   the all-reduce of a gradient-sized buffer alone.

For each: the bytes each rank hands to the collectives per step (from the
module's counters, and for DDP the gradient's size times the ring
all-reduce's 2 (W - 1) / W), the bytes that crossed the loopback interface
(``/proc/net/dev``, both ranks, TCP payload and headers; other loopback
traffic on the machine would be counted too), and the median time per step
and per exchange.

3. **projection** to W = 8 and 64 ranks, *from the measured bytes per
   rank and step* (not measured at those sizes): an all-gather makes each
   rank receive (and, in gloo's ring, send) (W - 1) records, a ring
   all-reduce 2 (W - 1) / W times the gradient; time at a given link
   bandwidth (``--bandwidth-gbit``, latency ignored).  Every replica of the
   factored layer applies the whole global minibatch of W m examples: that
   update is *measured* here, in one process, at W m = 2 m, 8 m and 64 m
   (batch and online mode), so that the projection's compute column is a
   measurement of this machine.

Run ``python bench/bench_distributed.py --help`` for the options; with
``taskset -c 1`` both ranks share one core (the numbers in the README were
taken that way, on a loaded VM: time per step is then pessimistic, the
bytes are exact).  Results go to stdout and, with ``--json PATH``, to a
JSON file.
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Bytes and time per step of fastsparse.distributed's "
                    "exchange against DDP all-reducing a dense output layer "
                    "(2 processes on loopback), and a projection to more ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-outputs", type=int, default=200_000, metavar="D")
    p.add_argument("--n-hidden", type=int, default=256, metavar="d")
    p.add_argument("--batch-size", type=int, default=128, metavar="m",
                   help="examples per rank and step")
    p.add_argument("--steps", type=int, default=30,
                   help="timed steps of the factored layer (per mode)")
    p.add_argument("--dense-steps", type=int, default=5,
                   help="timed steps of the dense layer (each O(m D d))")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ranks", default="8,64",
                   help="world sizes of the projection")
    p.add_argument("--bandwidth-gbit", default="10,100",
                   help="link bandwidths of the projection (Gbit/s)")
    p.add_argument("--scaling-repeats", type=int, default=2,
                   help="repetitions of the single-process global-minibatch "
                        "update at each projected size (a minibatch update of "
                        "64 m examples takes tens of seconds)")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip the single-process update measurements")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", nargs=3, metavar=("RANK", "PORT", "OUT"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------ measurements
def lo_bytes():
    """Bytes transmitted on the loopback interface so far (Linux), or None."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == "lo":
                    return int(rest.split()[8])
    except OSError:
        pass
    return None


def median_ms(xs):
    return 1e3 * statistics.median(xs) if xs else float("nan")


def worker(args):
    import torch
    import torch.distributed as dist

    import fastsparse
    from fastsparse.distributed import DistributedFactoredOutput

    rank, port, out_path = int(args.worker[0]), args.worker[1], args.worker[2]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=args.timeout))
    W = dist.get_world_size()
    D, d, m = args.n_outputs, args.n_hidden, args.batch_size
    eps = 0.1
    rng = np.random.default_rng([rank, 1])
    res = {"rank": rank, "world_size": W}

    def batches(n):
        for _ in range(n):
            h = np.tanh(rng.standard_normal((m, d))).astype(np.float32) / 4
            yield (torch.from_numpy(h).requires_grad_(),
                   torch.from_numpy(rng.integers(0, D, m)))

    # ---------------- factored, replicated, exchanging minibatches
    t0 = time.perf_counter()
    layer = fastsparse.FactoredOutputLayer(
        D, d, dtype=np.float32, seed=0,
        loss=fastsparse.losses.SphericalSoftmax(eps=eps))
    res["factored_build_s"] = time.perf_counter() - t0
    for mode in ("batch", "online"):
        t0 = time.perf_counter()
        out = DistributedFactoredOutput(layer, 0.05, reduction="mean", mode=mode,
                                        timeout=args.timeout, check_every=0)
        res["initial_check_s"] = time.perf_counter() - t0    # full fingerprint
        for h, y in batches(args.warmup):
            out(h, y).backward()
        dist.barrier()
        lo0, st0 = lo_bytes(), dict(out.stats)
        steps, exch = [], []
        for h, y in batches(args.steps):
            s0 = out.stats["seconds"]
            t = time.perf_counter()
            out(h, y).backward()
            steps.append(time.perf_counter() - t)
            exch.append(out.stats["seconds"] - s0)
        dist.barrier()
        lo1 = lo_bytes()
        n = args.steps
        res[f"factored_{mode}"] = {
            "ms_per_step": median_ms(steps), "ms_exchange_per_step": median_ms(exch),
            "bytes_sent_per_step": (out.stats["bytes_sent"] - st0["bytes_sent"]) / n,
            "bytes_received_per_step":
                (out.stats["bytes_received"] - st0["bytes_received"]) / n,
            "loopback_bytes_per_step": None if lo0 is None else (lo1 - lo0) / n,
            "exchanges_per_step": (out.stats["exchanges"] - st0["exchanges"]) / n}
    res["fingerprint"] = out.check_replicas(full=True)
    del out, layer

    # ---------------- dense nn.Linear in DDP
    torch.manual_seed(0)
    lin = torch.nn.Linear(d, D)
    ddp = torch.nn.parallel.DistributedDataParallel(lin)
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    rows = torch.arange(m)

    def dense_step(h, y, sync=True):
        opt.zero_grad()
        if sync:
            o = ddp(h)
        else:
            with ddp.no_sync():
                o = ddp(h)
        e = o * o + eps
        L = (torch.log(e.sum(1)) - torch.log(e[rows, y])).mean()
        if sync:
            L.backward()
        else:
            with ddp.no_sync():
                L.backward()
        opt.step()

    for h, y in batches(1):
        dense_step(h.detach(), y)
    dist.barrier()
    lo0 = lo_bytes()
    with_sync = []
    for h, y in batches(args.dense_steps):
        t = time.perf_counter()
        dense_step(h.detach(), y)
        with_sync.append(time.perf_counter() - t)
    dist.barrier()
    lo1 = lo_bytes()
    no_sync = []
    for h, y in batches(args.dense_steps):
        t = time.perf_counter()
        dense_step(h.detach(), y, sync=False)
        no_sync.append(time.perf_counter() - t)
    dist.barrier()
    n_grad = sum(p.numel() for p in lin.parameters())
    buf = torch.zeros(n_grad)
    ar = []
    for _ in range(args.dense_steps):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(buf)
        ar.append(time.perf_counter() - t)
    res["dense"] = {
        "ms_per_step": median_ms(with_sync), "ms_per_step_no_allreduce": median_ms(no_sync),
        "ms_allreduce_alone": median_ms(ar), "gradient_bytes": 4 * n_grad,
        "bytes_sent_per_step": 2 * (W - 1) / W * 4 * n_grad,
        "loopback_bytes_per_step": None if lo0 is None else (lo1 - lo0) / args.dense_steps}
    with open(out_path, "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(args):
    """The 2-process part; returns rank 0's and rank 1's results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.json") for r in range(2)]
        base = [sys.executable, os.path.abspath(__file__),
                "--n-outputs", str(args.n_outputs), "--n-hidden", str(args.n_hidden),
                "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                "--dense-steps", str(args.dense_steps), "--warmup", str(args.warmup),
                "--timeout", str(args.timeout)]
        procs = [subprocess.Popen(base + ["--worker", str(r), port, outs[r]], env=env)
                 for r in range(2)]
        deadline = time.monotonic() + 20 * args.timeout
        for p in procs:
            try:
                p.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise
        if any(p.returncode for p in procs):
            raise SystemExit(f"a rank failed: return codes {[p.returncode for p in procs]}")
        res = []
        for path in outs:
            with open(path) as f:
                res.append(json.load(f))
    return res


def replica_update_times(args, sizes):
    """Time of one replica's update of a global minibatch of M examples
    (layer.backward, batch mode; layer.step, online mode), one process."""
    import fastsparse

    D, d = args.n_outputs, args.n_hidden
    layer = fastsparse.FactoredOutputLayer(
        D, d, dtype=np.float32, seed=0,
        loss=fastsparse.losses.SphericalSoftmax(eps=0.1))
    rng = np.random.default_rng(5)
    out = {}
    for M in sizes:
        H = (np.tanh(rng.standard_normal((M, d))) / 4).astype(np.float32)
        y = rng.integers(0, D, M)
        a, q, s = layer.forward(H, y[:, None])
        Z = q + D * 0.1
        ga = (-2 * a / (a * a + 0.1)).astype(np.float32)
        gq = (1.0 / Z).astype(np.float32)
        tb, to = [], []
        for _ in range(args.scaling_repeats):
            t = time.perf_counter()
            layer.backward(H, y[:, None], ga, gq, None, 0.05 / M)
            tb.append(time.perf_counter() - t)
            t = time.perf_counter()
            layer.step(H, y, 0.05, mode="online")
            to.append(time.perf_counter() - t)
        out[M] = {"batch_ms": 1e3 * min(tb), "online_ms": 1e3 * min(to)}
        print(f"  global minibatch M = {M:6d}: batch update {out[M]['batch_ms']:9.1f} ms, "
              f"online {out[M]['online_ms']:9.1f} ms", file=sys.stderr, flush=True)
    return out


def fmt_bytes(b):
    if b is None:
        return "n/a"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= k:
            return f"{b / k:.3g} {unit}"
    return f"{b:.0f} B"


def report(args, ranks, scaling):
    r0 = ranks[0]
    D, d, m = args.n_outputs, args.n_hidden, args.batch_size
    lines = [f"fastsparse.distributed vs DDP on a dense output layer: D = {D}, "
             f"d = {d}, m = {m} per rank, float32, K = 1, 2 ranks on 127.0.0.1 (gloo)", ""]
    fb, fo, de = r0["factored_batch"], r0["factored_online"], r0["dense"]
    lines += ["| output layer | bytes sent per rank per step | loopback bytes per step "
              "(both ranks) | exchange per step | whole step |", "|---|---|---|---|---|"]
    for name, x in (("factored, batch", fb), ("factored, online", fo)):
        lines.append(f"| {name} | {fmt_bytes(x['bytes_sent_per_step'])} | "
                     f"{fmt_bytes(x['loopback_bytes_per_step'])} | "
                     f"{x['ms_exchange_per_step']:.2f} ms | {x['ms_per_step']:.1f} ms |")
    lines.append(f"| dense nn.Linear + DDP | {fmt_bytes(de['bytes_sent_per_step'])} | "
                 f"{fmt_bytes(de['loopback_bytes_per_step'])} | "
                 f"{de['ms_allreduce_alone']:.0f} ms (all-reduce alone); "
                 f"{de['ms_per_step'] - de['ms_per_step_no_allreduce']:.0f} ms "
                 f"(step with - without) | {de['ms_per_step']:.0f} ms "
                 f"({de['ms_per_step_no_allreduce']:.0f} ms without all-reduce) |")
    ratio = de["bytes_sent_per_step"] / fb["bytes_sent_per_step"]
    lines += ["", f"bytes per step, dense / factored (batch): {ratio:,.0f}x", ""]
    # projection
    Ws = [int(w) for w in args.ranks.split(",") if w]
    bws = [float(b) for b in args.bandwidth_gbit.split(",") if b]
    rec = fb["bytes_received_per_step"] / (r0["world_size"] - 1)   # one rank's records
    reco = fo["bytes_received_per_step"] / (r0["world_size"] - 1)
    G = de["gradient_bytes"]
    lines += ["Projection from the measured bytes per step (not measured at these "
              "sizes): per rank and step, an all-gather of W records sends and "
              "receives (W - 1) records each way, a ring all-reduce 2 (W - 1) / W "
              "times the gradient; transfer time at the link bandwidth, latency "
              "ignored.  'replica update' is measured here: one process applying "
              "the global minibatch of W m examples.", "",
              "| ranks W | global minibatch | factored: bytes per rank per step "
              "(batch / online) | dense DDP: bytes per rank per step | ratio | "
              + " | ".join(f"transfer at {b:g} Gbit/s, factored / dense" for b in bws)
              + " | replica update, batch / online (measured) |",
              "|---" * (6 + len(bws)) + "|"]
    proj = []
    for w in [r0["world_size"]] + Ws:
        fbytes, fobytes = (w - 1) * rec, (w - 1) * reco
        dbytes = 2 * (w - 1) / w * G
        row = {"world_size": w, "global_batch": w * m, "factored_batch_bytes": fbytes,
               "factored_online_bytes": fobytes, "dense_bytes": dbytes}
        times = []
        for b in bws:
            bps = b * 1e9 / 8
            times.append(f"{1e3 * fbytes / bps:.2f} ms / {1e3 * dbytes / bps:.0f} ms")
            row[f"transfer_ms_{b:g}gbit"] = (1e3 * fbytes / bps, 1e3 * dbytes / bps)
        sc = scaling.get(w * m) if scaling else None
        upd = (f"{sc['batch_ms']:.0f} ms / {sc['online_ms']:.0f} ms" if sc else "n/a")
        row["replica_update_ms"] = sc
        proj.append(row)
        label = f"{w} (measured)" if w == r0["world_size"] else f"{w}"
        lines.append(f"| {label} | {w * m} | {fmt_bytes(fbytes)} / {fmt_bytes(fobytes)} | "
                     f"{fmt_bytes(dbytes)} | {dbytes / fbytes:,.0f}x | "
                     + " | ".join(times) + f" | {upd} |")
    return "\n".join(lines), proj


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    print("2 ranks on 127.0.0.1: factored exchange, then DDP on the dense layer ...",
          file=sys.stderr, flush=True)
    ranks = run_ranks(args)
    scaling = {}
    if not args.no_scaling:
        print("one process: update of the global minibatch of W m examples ...",
              file=sys.stderr, flush=True)
        Ws = [2] + [int(w) for w in args.ranks.split(",") if w]
        scaling = replica_update_times(args, [w * args.batch_size for w in Ws])
    text, proj = report(args, ranks, scaling)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "worker"},
                       "ranks": ranks, "scaling": {str(k): v for k, v in scaling.items()},
                       "projection": proj}, f, indent=1)


if __name__ == "__main__":
    main()
