"""The C-level microbenchmarks: fastsparse._bench's compiled timing loops,
the standalone C program bench/c/fs_microbench (built against the
scipy-openblas32 wheel; skipped without it or without a C compiler), and
bench/microbench.py, all at tiny sizes.

The C program's ``--check`` mode runs the blocked online step
(src_c/fs_online.c, compiled into the program and calling the wheel's BLAS)
on a small deterministic float64 problem and writes its inputs and results;
the package's sequential BLAS-2 kernel (``_core.online_step``, block=0) must
reproduce them to 1e-10 relative (observed ~1e-15: the problem is well
conditioned, see test_online_blocked.py for the bound in general).
"""
import importlib.util
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fastsparse import _core

_bench = pytest.importorskip("fastsparse._bench")

ROOT = Path(__file__).resolve().parents[1]
MICROBENCH = ROOT / "bench" / "microbench.py"


def _load_microbench():
    if not MICROBENCH.exists():
        pytest.skip("not running from a source checkout")
    spec = importlib.util.spec_from_file_location("microbench", MICROBENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SEQ = ["gemv U h", "symv M u", "gemv U^T z", "gemv Uinv^T h",
       "ger U -= c u h^T", "ger Uinv += h t^T", "syr2 M -= lr (w y^T + y w^T)"]
BLOCKED = ["gemm H U^T", "symm (H U^T) M", "gemm H Uinv", "gemm H H^T",
           "in-block corrections (7 gemv i x d, i < k)", "gemm Z U (flush)",
           "gemm Z Bu^T (flush)", "gemm G H (flush)", "syr2k M rank-2k update",
           "gemm U rank-k update", "gemm Uinv rank-k update"]
SPARSE = ["gather_dots (a = V[j] . u)", "gather_combine (V^T ydot)",
          "scatter_axpy (V[j] += c w)", "all three on the same rows (one example)"]
BATCH = ["gemm H U^T (forward)", "symm (H U^T) M (forward)", "gemm Z U (gradient)",
         "gemm H H^T", "getrf (I - 2 lr diag(gq) H H^T)", "gemm H Uinv",
         "getrs (d right-hand sides)", "gemm (H H^T) Z",
         "csr_gram_add: Ydot Ydot^T from the targets",
         "gemm (Ydot Ydot^T) P: dense path (>= 1/8 non-zero)",
         "gemm U rank-m update", "gemm Uinv rank-m update (Woodbury)",
         "syr2k M rank-2m update"]


def _check_rows(rows):
    for r in rows:
        assert math.isfinite(r["min_s"]) and r["min_s"] > 0, r
        assert math.isfinite(r["median_s"]) and r["median_s"] >= r["min_s"], r
        assert r["calls"] >= 1
        if r.get("flops"):
            assert math.isfinite(r["gflops"]) and r["gflops"] > 0, r
            assert math.isfinite(r["gbytes_per_s"]) and r["gbytes_per_s"] > 0, r


# ------------------------------------------------------ compiled loops
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bench_run_tiny(dtype):
    rows = _bench.run(D=300, d=8, K=2, m=6, dtype=dtype, block=(2, 4),
                      repeats=2, target_time=1e-5)
    _check_rows(rows)
    names = {(r["kernel"], r["block"]) for r in rows}
    for n in SEQ + SPARSE + BATCH:
        assert (n, None) in names, n
    for k in (2, 4):
        for n in BLOCKED:
            assert (n, k) in names, (n, k)
        suffix = "s" if dtype == "float32" else "d"
        assert (f"online blocked k={k} (fs_online_blocked_{suffix})", k) in names
    assert any(n.startswith("axpy (Ydot Ydot^T) P: sparse path, ") for n, _ in names)
    steps = [r for r in rows if r["section"].startswith("whole steps")]
    assert len(steps) == 1 + 2 * 2 + 1
    online = [r for r in steps if "online" in r["kernel"]]
    assert {r["passes_per_example"] for r in online} == {7.0, 7 / 2, 7 / 4}
    assert all(r["examples"] == 6 for r in steps)
    assert {r["via"] for r in rows} == {"C loop", "python"}
    assert all(r["dtype"] == dtype and r["d"] == 8 for r in rows)


def test_bench_run_keeps_state_healthy():
    state = _bench.make_state(200, 6, np.float64, seed=1)
    U0 = state["U"].copy()
    _bench.run(D=200, d=6, K=1, m=4, dtype="float64", block=2, repeats=2,
               target_time=1e-5, state=state, python_rows=False)
    U, Uinv = state["U"], state["Uinv"]
    assert not np.array_equal(U, U0)          # the whole steps ran on it
    np.testing.assert_allclose(U @ Uinv, np.eye(6), atol=1e-10)
    assert np.linalg.cond(U) < 2


def test_bench_run_validates():
    with pytest.raises(ValueError):
        _bench.run(D=10, d=4, K=1, m=2, dtype="int32", repeats=1)
    with pytest.raises(ValueError):
        _bench.run(D=10, d=4, K=11, m=2, repeats=1)


# ------------------------------------------------------------ C program
@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    mb = _load_microbench()
    reason = mb.c_program_unavailable()
    if reason is not None:
        pytest.skip(reason)
    exe = tmp_path_factory.mktemp("cbench") / "fs_microbench"
    res = mb.build_c_program(exe)
    assert res.returncode == 0, res.stderr
    return exe


def test_c_program_runs_tiny(c_program):
    mb = _load_microbench()
    res = subprocess.run([str(c_program), "--tsv", "--target-ms", "0.01",
                          "500", "8", "2", "8", "2,4", "2", "float32"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info, rows = mb.parse_tsv(res.stdout)
    assert "OpenBLAS" in info["blas"]
    assert info["blas threads"].startswith("1 ")
    _check_rows(rows)
    names = {(r["kernel"], r["block"]) for r in rows}
    for n in SEQ + SPARSE + BATCH:
        assert (n, None) in names, n
    for k in (2, 4):
        for n in BLOCKED:
            assert (n, k) in names, (n, k)
        step = [r for r in rows if r["kernel"] == f"online blocked k={k} (fs_online_blocked_s)"]
        assert len(step) == 1 and step[0]["passes_per_example"] == pytest.approx(7 / k)
    assert ("power iterations: U^T(U x), Uinv^T(Uinv x) (4 gemv)", None) in names
    assert any(n.startswith("axpy (Ydot Ydot^T) P: sparse path, ") for n, _ in names)


def test_c_program_table_and_help(c_program):
    res = subprocess.run([str(c_program), "--target-ms", "0.01", "--threads", "2",
                          "300", "6", "1", "4", "2", "2", "float64"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "online sequential (per example)" in out
    assert "online blocked k=2 (fs_online_blocked_d)" in out
    assert "GFLOP/s" in out and "passes/ex" in out
    assert "2 (state set-up" in out
    res = subprocess.run([str(c_program), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "usage: fs_microbench" in res.stdout
    res = subprocess.run([str(c_program), "10", "4", "1", "2", "2", "2", "int8"],
                         capture_output=True, text=True)
    assert res.returncode == 2


def _read_check(path):
    raw = Path(path).read_bytes()
    off = 0

    def take(dt, n):
        nonlocal off
        a = np.frombuffer(raw, dtype=dt, count=n, offset=off).copy()
        off += a.nbytes
        return a

    magic, D, d, K, m, n_steps, block, keep_s = (int(x) for x in take("<i8", 8))
    assert magic == 0x424D5346 and keep_s == 1
    lr, wd = take("<f8", 2)

    def state():
        return {"V": take("<f8", D * d).reshape(D, d),
                "U": take("<f8", d * d).reshape(d, d),
                "Uinv": take("<f8", d * d).reshape(d, d),
                "M": take("<f8", d * d).reshape(d, d),
                "omega": take("<f8", d), "sv": take("<f8", d)}

    out = {"D": D, "d": d, "K": K, "m": m, "n_steps": n_steps, "block": block,
           "lr": float(lr), "wd": float(wd), "init": state()}
    out["H"] = take("<f8", n_steps * m * d).reshape(n_steps, m, d)
    out["indices"] = take("<i8", n_steps * m * K).reshape(n_steps, m * K)
    out["values"] = take("<f8", n_steps * m * K).reshape(n_steps, m * K)
    out["status"] = take("<i8", n_steps)
    out["final"] = state()
    out["loss"] = take("<f8", n_steps * m).reshape(n_steps, m)
    out["grad"] = take("<f8", n_steps * m * d).reshape(n_steps, m, d)
    assert off == len(raw)
    return out


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("args", [[], ["50", "7", "2", "11", "3", "--steps", "4"]])
def test_c_check_matches_package(c_program, tmp_path, args):
    path = tmp_path / "check.bin"
    res = subprocess.run([str(c_program), "--check", str(path)] + args,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    c = _read_check(path)
    assert not c["status"].any()
    st = {k: v.copy() for k, v in c["init"].items()}
    m, d, K = c["m"], c["d"], c["K"]
    indptr = K * np.arange(m + 1, dtype=np.int64)
    for i in range(c["n_steps"]):
        loss = np.empty(m)
        grad = np.empty((m, d))
        status, _, _ = _core.online_step(
            st["V"], st["U"], st["Uinv"], st["M"], st["omega"], st["sv"],
            c["H"][i], indptr, c["indices"][i], c["values"][i], c["lr"],
            c["wd"], int(_core.LossKind.LOSS_SQUARED), np.zeros(0), 1e-3, loss, grad, block=0)
        assert status == 0
        assert _rel(loss, c["loss"][i]) < 1e-10
        assert _rel(grad, c["grad"][i]) < 1e-10
    for name in ("V", "U", "Uinv", "M", "omega", "sv"):
        a, b = st[name], c["final"][name]
        if name == "M":                      # only the upper triangle is kept
            a, b = np.triu(a), np.triu(b)
        assert _rel(a, b) < 1e-10, name
        # the steps really moved the state (the comparison is not vacuous)
        init = np.triu(c["init"][name]) if name == "M" else c["init"][name]
        assert _rel(init, b) > 1e-3, name


# -------------------------------------------------------- the one command
def test_microbench_command_tiny(tmp_path, capsys):
    mb = _load_microbench()
    out_json = tmp_path / "mb.json"
    rc = mb.main(["--quick", "-D", "400", "-d", "8", "-m", "8", "--blocks", "4",
                  "--repeats", "2", "--target-ms", "0.01", "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fastsparse._bench (package BLAS" in text
    assert "where the time of an online step goes" in text
    rec = json.loads(out_json.read_text())
    assert rec["python"]["8"]["rows"]
    if mb.c_program_unavailable() is None:
        assert "bench/c/fs_microbench (" in text
        assert rec["c"]["8"]["rows"]
    else:
        assert "standalone C program skipped" in text


def test_cpu_peak():
    mb = _load_microbench()
    peak, how = mb.cpu_peak(np.float32, 1)
    if peak is not None:
        p64, _ = mb.cpu_peak(np.float64, 2)
        assert p64 == pytest.approx(peak)     # half the lanes, twice the cores
        assert "nominal" in how


def test_microbench_says_why_c_is_skipped(monkeypatch, capsys):
    mb = _load_microbench()
    monkeypatch.setattr(mb, "c_program_unavailable", lambda: "no C compiler (test)")
    assert mb.main(["--no-python", "-D", "100", "-d", "4"]) == 0
    assert "standalone C program skipped: no C compiler (test)" in capsys.readouterr().out


def test_build_script_explains_missing_wheel(tmp_path):
    if not (ROOT / "bench" / "c" / "build.sh").exists():
        pytest.skip("not running from a source checkout")
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    res = subprocess.run(["sh", str(ROOT / "bench" / "c" / "build.sh"), "-o",
                          str(tmp_path / "x")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)})
    assert res.returncode == 3
    assert "scipy_openblas32 is not importable" in res.stderr
