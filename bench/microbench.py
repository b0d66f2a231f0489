"""C-level microbenchmarks of the factored layer's steps, in one command.

Shows where the time of a step goes without Python in the way:

1. the compiled timing loops of :mod:`fastsparse._bench` (``nogil`` loops
   around each kernel: every BLAS call of the sequential and of the blocked
   online step at its size, the sparse V-row kernels, the BLAS/LAPACK calls
   of the minibatch step and its Woodbury update, the core of the stability
   monitor, and the whole steps) on a real state, through the same BLAS as
   the package (``scipy.linalg.cython_blas``);
2. the standalone C program ``bench/c/fs_microbench`` (built here with
   ``bench/c/build.sh`` from src_c/ against the scipy-openblas32 wheel's
   library, skipped with the reason when that wheel or a C compiler is
   missing), which times the same kernels and the whole blocked online step
   with no Python at all.

Each row gives the time per call (min and median over the samples),
GFLOP/s and GB/s (from the median, by the stated flop and byte models)
and, for the whole online steps, the passes over d x d matrices per example.
At d = 128 (where the d x d state fits in L2) the online steps' GFLOP/s are
also given as a fraction of the CPU's FMA peak at its nominal clock.

Run ``python bench/microbench.py --help`` for the options.
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from fastsparse import _bench
from fastsparse._demo import environment_lines, format_table, format_time

ROOT = Path(__file__).resolve().parents[1]
BUILD_SH = ROOT / "bench" / "c" / "build.sh"
DEFAULT_D = 793_471
QUICK_D = 50_000


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
        description="Time each kernel of the online and minibatch steps (each "
                    "BLAS call, the sparse V-row kernels, the Woodbury update, "
                    "the stability monitor) and the whole steps in compiled "
                    "loops: first through fastsparse._bench (the package's "
                    "BLAS), then with the standalone C program bench/c/"
                    "fs_microbench (built against the scipy-openblas32 wheel). "
                    "Tables go to stdout, progress to stderr.")
    p.add_argument("--n-outputs", "-D", type=int, default=None, metavar="D",
                   help=f"outputs (rows of V) (default: {DEFAULT_D}; "
                        f"{QUICK_D} with --quick)")
    p.add_argument("--n-hidden", "-d", default="512,128", metavar="d[,d...]",
                   help="hidden sizes, comma-separated; at d=128 the d x d "
                        "state fits in L2 and the fraction of the FMA peak is "
                        "reported (default: 512,128)")
    p.add_argument("--n-targets", "-K", type=int, default=1, metavar="K",
                   help="targets per example, i.e. random rows of V touched "
                        "(default: 1)")
    p.add_argument("--batch-size", "-m", type=int, default=128, metavar="m",
                   help="examples per call: minibatch size, and examples per "
                        "call of the whole online steps (default: 128)")
    p.add_argument("--blocks", default="32,64", metavar="k[,k...]",
                   help="block sizes of the blocked online step (default: "
                        "32,64)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="(default: float32)")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="timed samples per kernel; min and median are "
                        "reported (default: 15; 5 with --quick)")
    p.add_argument("--target-ms", type=float, default=None, metavar="MS",
                   help="milliseconds per sample of a fast kernel, which is "
                        "called repeatedly within a sample (default: 2; 0.5 "
                        "with --quick)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="BLAS threads during the measurements, also the cores "
                        "counted in the FMA peak (default: 1)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="learning rate of the whole steps, ||h|| = 1 (default: "
                        "1e-4)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--quick", action="store_true",
                   help="small D and fewer, shorter samples: a smoke run")
    p.add_argument("--no-python", action="store_true",
                   help="skip the fastsparse._bench loops")
    p.add_argument("--no-c", action="store_true",
                   help="skip the standalone C program")
    p.add_argument("--json", metavar="PATH",
                   help="also write the configuration and all rows as JSON")
    args = p.parse_args(argv)
    try:
        args.n_hidden = [int(x) for x in str(args.n_hidden).split(",") if x]
        args.blocks = [int(x) for x in str(args.blocks).split(",") if x]
    except ValueError:
        p.error("--n-hidden and --blocks take comma-separated integers")
    if args.n_outputs is None:
        args.n_outputs = QUICK_D if args.quick else DEFAULT_D
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    if args.target_ms is None:
        args.target_ms = 0.5 if args.quick else 2.0
    if not args.n_hidden or not args.blocks:
        p.error("--n-hidden and --blocks must not be empty")
    for name, v in (("--n-outputs", args.n_outputs), ("--n-targets", args.n_targets),
                    ("--batch-size", args.batch_size), ("--repeats", args.repeats),
                    ("--threads", args.threads), ("--n-hidden", min(args.n_hidden)),
                    ("--blocks", min(args.blocks))):
        if v < 1:
            p.error(f"{name} must be >= 1")
    if args.n_targets > args.n_outputs:
        p.error("--n-targets must be <= --n-outputs")
    if not (args.target_ms >= 0 and 0 <= args.lr < 0.1):
        p.error("--target-ms must be >= 0 and --lr in [0, 0.1)")
    return args


# ------------------------------------------------------------- CPU peak
def cpu_peak(dtype, cores):
    """Nominal FMA peak of this CPU for ``cores`` cores.

    ``cores x 2 FMA units x lanes x 2 flops x clock``, lanes = 8 (float32)
    or 4 (float64) for 256-bit AVX2 FMA units (two per core on Zen 3 and
    Intel since Haswell), clock = the "cpu MHz" of /proc/cpuinfo: nominal
    (the core may boost above it or be throttled below it).

    Parameters
    ----------
    dtype : numpy dtype
    cores : int

    Returns
    -------
    tuple of (float or None, str)
        GFLOP/s (None when the clock or FMA support is unknown) and a text
        explaining the figure.
    """
    mhz, flags = None, ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except (OSError, ValueError):
        pass
    if mhz is None:
        return None, "unknown (no 'cpu MHz' in /proc/cpuinfo)"
    if " fma" not in flags or " avx2" not in flags:
        return None, "unknown (no AVX2+FMA flags in /proc/cpuinfo)"
    lanes = 8 if np.dtype(dtype) == np.float32 else 4
    peak = cores * 2 * lanes * 2 * mhz / 1e3
    return peak, (f"{cores} core(s) x 2 FMA units x {lanes} lanes x 2 flops x "
                  f"{mhz:.0f} MHz (nominal clock from /proc/cpuinfo) = "
                  f"{peak:.1f} GFLOP/s")


# ------------------------------------------------------------ formatting
def _g(x, digits=3):
    return "" if x is None else f"{x:.{digits}g}"


def print_rows(rows, emit, title):
    """Print result rows as one table per section."""
    emit(title)
    emit("=" * len(title))
    sections = []
    for r in rows:
        if r["section"] not in sections:
            sections.append(r["section"])
    for sec in sections:
        sel = [r for r in rows if r["section"] == sec]
        steps = any("median_per_example_s" in r for r in sel)
        headers = ["kernel", "shape", "calls", "min/call", "median/call",
                   "GFLOP/s", "GB/s"]
        if steps:
            headers += ["median/example", "passes/example"]
        headers.append("via")
        out = []
        for r in sel:
            row = [r["kernel"], r["shape"], r["calls"], format_time(r["min_s"]),
                   format_time(r["median_s"]), _g(r.get("gflops")),
                   _g(r.get("gbytes_per_s"))]
            if steps:
                pe = r.get("median_per_example_s")
                row += ["" if pe is None else format_time(pe),
                        _g(r.get("passes_per_example"), 4)]
            row.append(r["via"])
            out.append(row)
        align = "<<" + ">" * (len(headers) - 3) + "<"
        emit()
        emit(sec)
        emit(format_table(headers, out, align))
    emit()


def accounting(rows):
    """Per example: the whole online steps next to the sum of their timed
    kernels, i.e. where the time of a step goes.

    Minimum times are used: the kernels and the whole steps are measured at
    different moments, and the minimum is the figure least disturbed by
    other work on the machine.

    Parameters
    ----------
    rows : list of dict
        Rows of one size (:func:`fastsparse._bench.run` or the C program).

    Returns
    -------
    list of list
        Table rows: step, whole step per example, its BLAS calls per example
        (the sequential path: the 7 BLAS-2 calls; blocked: the block's calls
        and corrections divided by k), the sparse V-row work of an example,
        the rest (level-1 work, the loss, checks, allocation and, for
        ``via == "python"``, the Python call), and the BLAS share.
    """
    sparse = [r["min_s"] for r in rows if r["section"].startswith("sparse")
              and r["kernel"].startswith("all three")]
    seq = [r["min_s"] for r in rows if r["section"].startswith("online sequential")]
    out = []
    for r in rows:
        if not (r["section"].startswith("whole steps") and "online" in r["kernel"]):
            continue
        if r.get("block"):
            k = r["block"]
            parts = [x["min_s"] for x in rows
                     if x["section"].startswith(f"online blocked k={k} ")]
            blas = sum(parts) / k if parts else None
        else:
            blas = sum(seq) if seq else None
        if blas is None or not sparse:
            continue
        whole = r["min_s"] / r["examples"]
        rest = whole - blas - sparse[0]
        out.append([r["kernel"], format_time(whole), format_time(blas),
                    format_time(sparse[0]), format_time(rest),
                    f"{100 * blas / whole:.0f}%"])
    return out


def print_summary(rows, emit, args, dtype, d, label):
    """Where the time goes, and the fraction of the FMA peak at d = 128."""
    acc = accounting(rows)
    if acc:
        emit(f"{label}, d={d}: where the time of an online step goes "
             "(per example, minimum times)")
        emit(format_table(["step", "whole", "its BLAS calls", "sparse V rows",
                           "rest", "BLAS share"], acc))
        emit()
    if d == 128:
        peak, how = cpu_peak(dtype, args.threads)
        prow = []
        for r in rows:
            if r["section"].startswith("whole steps") and r.get("flops"):
                best = r["flops"] / r["min_s"] / 1e9
                row = [r["kernel"], f"{r['gflops']:.2f}", f"{best:.2f}"]
                if peak is not None:
                    row += [f"{100 * r['gflops'] / peak:.1f}%",
                            f"{100 * best / peak:.1f}%"]
                prow.append(row)
        if prow:
            emit(f"{label}, d=128: GFLOP/s of the whole steps against the "
                 "FMA peak")
            emit(f"peak: {how}")
            headers = ["step", "GFLOP/s (median)", "GFLOP/s (min time)"]
            if peak is not None:
                headers += ["of peak (median)", "of peak (min time)"]
            emit(format_table(headers, prow))
            emit()


# ------------------------------------------------------------- C program
def c_program_unavailable():
    """Why the standalone C program cannot be built here, or None."""
    # find_spec, not import: importing the wheel would load a second
    # OpenBLAS into this process (build.sh asks a child interpreter)
    if importlib.util.find_spec("scipy_openblas32") is None:
        return ("the scipy-openblas32 wheel is not installed (pip install "
                "scipy-openblas32, or the 'cbench' extra)")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return f"no C compiler ({cc!r} not found; set CC)"
    if shutil.which("sh") is None:
        return "no POSIX shell to run bench/c/build.sh"
    if not BUILD_SH.exists():
        return f"{BUILD_SH} is missing (not a source checkout)"
    return None


def build_c_program(out_path):
    """Build bench/c/fs_microbench with bench/c/build.sh.

    Parameters
    ----------
    out_path : str or Path

    Returns
    -------
    subprocess.CompletedProcess
    """
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["sh", str(BUILD_SH), "-o", str(out_path)], env=env,
                          capture_output=True, text=True)


def parse_tsv(text):
    """The ``info`` and ``row`` lines of ``fs_microbench --tsv``.

    Returns
    -------
    (dict, list of dict)
        Info items, and rows with the keys of :func:`fastsparse._bench.run`.
    """
    info, rows = {}, []
    for line in text.splitlines():
        f = line.split("\t")
        if f[0] == "info" and len(f) >= 3:
            info[f[1]] = f[2]
        elif f[0] == "row" and len(f) == 12:
            (_, section, kernel, shape, block, inner, calls, tmin, tmed, flops,
             nbytes, passes) = f
            tmed, flops, nbytes = float(tmed), float(flops), float(nbytes)
            row = {"section": section, "kernel": kernel, "shape": shape,
                   "via": "C program", "block": int(block) or None,
                   "inner": int(inner), "calls": int(calls),
                   "min_s": float(tmin), "median_s": tmed,
                   "flops": flops or None, "bytes": nbytes or None,
                   "gflops": flops / tmed / 1e9 if flops else None,
                   "gbytes_per_s": nbytes / tmed / 1e9 if nbytes else None}
            if float(passes) >= 0:
                m = int(shape.split("=")[1].split()[0])
                row.update(examples=m, median_per_example_s=tmed / m,
                           passes_per_example=float(passes))
            rows.append(row)
    return info, rows


def run_c_program(exe, D, d, K, m, blocks, repeats, dtype, threads,
                  target_ms, lr):
    """Run the C program at one size; returns (info, rows, seconds)."""
    cmd = [str(exe), "--tsv", "--threads", str(threads), "--target-ms",
           str(target_ms), "--lr", str(lr), str(D), str(d), str(K), str(m),
           ",".join(map(str, blocks)), str(repeats), dtype]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n"
                           f"{res.stderr.strip()}")
    info, rows = parse_tsv(res.stdout)
    return info, rows, time.perf_counter() - t0


# ------------------------------------------------------------------ main
def main(argv=None):
    """Run the microbenchmarks and print the report.

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
    D, K, m = args.n_outputs, args.n_targets, args.batch_size

    def emit(text=""):
        print(text, flush=True)

    def progress(msg):
        print(f"  {msg}", file=sys.stderr, flush=True)

    with threadpool_limits(limits=args.threads, user_api="blas"):
        env = environment_lines()
    emit("fastsparse microbenchmarks (C-level timing loops)")
    emit()
    emit(format_table(["machine and software", ""], env, "<<"))
    emit()
    peak, how = cpu_peak(dtype, args.threads)
    config = [
        ("outputs D", f"{D:,}"),
        ("hidden d", ", ".join(map(str, args.n_hidden))),
        ("targets per example K", f"{K} (uniformly random rows of V; squared "
                                  "error, target values 1)"),
        ("examples per call m", f"{m} (minibatch; online step calls)"),
        ("online block sizes k", ", ".join(map(str, args.blocks))),
        ("dtype", dtype.name),
        ("BLAS threads", f"{args.threads}"),
        ("samples per kernel", f"{args.repeats}, each >= {args.target_ms:g} ms "
                               "of calls (whole steps: one call per sample)"),
        ("state", "V random N(0, 1/d), U = I + 0.1 G/sqrt(d) (cond ~1.5), "
                  "Uinv = U^-1, M = V^T V; whole steps with lr "
                  f"{args.lr:g}, ||h|| = 1, fresh h and targets per call"),
        ("FMA peak", how),
    ]
    emit(format_table(["configuration", ""], config, "<<"))
    emit()
    for label, text in (("flops", _bench.FLOP_MODEL), ("bytes", _bench.BYTE_MODEL),
                        ("passes", _bench.PASS_MODEL)):
        emit(textwrap.fill(f"{label}: {text}.", width=79,
                           subsequent_indent="  "))
    emit(textwrap.fill(
        "GFLOP/s and GB/s are computed from the median time per call.  "
        "via: 'C loop' = a compiled nogil loop of fastsparse._bench; "
        "'python' = one Python call per timed call (the sequential online "
        "step and the minibatch step are cdef kernels of fastsparse._core "
        "that it does not export, so they are timed through "
        "_core.online_step(block=0) / _core.batch_step; the blocked step is "
        "shown both ways); 'C program' = bench/c/fs_microbench.",
        width=79))
    emit()

    record = {"config": {k: v for k, v in vars(args).items()},
              "environment": [list(e) for e in env],
              "peak": {"gflops": peak, "how": how},
              "python": {}, "c": {}}
    all_rows = {}

    if not args.no_python:
        for d in args.n_hidden:
            t0 = time.perf_counter()
            progress(f"fastsparse._bench: d={d}: building the state")
            state = _bench.make_state(D, d, dtype, args.seed, progress)
            t_state = time.perf_counter() - t0
            t0 = time.perf_counter()
            rows = _bench.run(D, d, K, m, dtype, args.blocks, args.repeats,
                              target_time=args.target_ms * 1e-3, lr=args.lr,
                              seed=args.seed, threads=args.threads,
                              state=state, status=progress)
            t_run = time.perf_counter() - t0
            del state
            all_rows[("python", d)] = rows
            record["python"][str(d)] = {"rows": rows, "setup_s": t_state,
                                        "run_s": t_run}
            print_rows(rows, emit, f"fastsparse._bench (package BLAS: "
                                   f"scipy.linalg.cython_blas), {dtype.name}, "
                                   f"D={D:,} d={d} K={K} m={m}")
            print_summary(rows, emit, args, dtype, d, "fastsparse._bench")
            emit(f"(state set-up {t_state:.1f} s, timing {t_run:.1f} s)")
            emit()

    if not args.no_c:
        reason = c_program_unavailable()
        if reason is None:
            with tempfile.TemporaryDirectory(prefix="fs_microbench_") as tmp:
                exe = Path(tmp) / "fs_microbench"
                progress("building bench/c/fs_microbench")
                res = build_c_program(exe)
                if res.returncode != 0:
                    reason = ("bench/c/build.sh failed:\n" + res.stderr.strip())
                else:
                    for d in args.n_hidden:
                        progress(f"fs_microbench: d={d}")
                        info, rows, secs = run_c_program(
                            exe, D, d, K, m, args.blocks, args.repeats,
                            dtype.name, args.threads, args.target_ms, args.lr)
                        for r in rows:
                            r.update(dtype=dtype.name, D=D, d=d, K=K, m=m)
                        all_rows[("c", d)] = rows
                        record["c"][str(d)] = {"info": info, "rows": rows,
                                               "seconds": secs}
                        print_rows(rows, emit,
                                   f"bench/c/fs_microbench ({info.get('blas', '?')}), "
                                   f"{dtype.name}, D={D:,} d={d} K={K} m={m}")
                        print_summary(rows, emit, args, dtype, d, "fs_microbench")
                        emit(f"(C program: {secs:.1f} s including its state "
                             "set-up)")
                        emit()
        if reason is not None:
            record["c"] = {"skipped": reason}
            emit(f"standalone C program skipped: {reason}")
            emit()

    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2, default=float)
        emit(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
