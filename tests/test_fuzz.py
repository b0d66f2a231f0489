"""Seeded fuzz tests, each bounded to a few seconds, run in a subprocess (a
crash of the process under test fails the test instead of killing the run).

* Inputs: mutated calls of every public method (shapes, dtypes, strides,
  index values at and around the bounds in every target format, lr,
  weight decay, mode, settings) on a factored layer and a naive layer fed
  the same calls.  Each call either succeeds on both, with results and
  weights that agree (float64, relative error < 1e-8), or raises a
  documented exception (TypeError, ValueError and its subclasses,
  IndexError) with the layer's state bitwise unchanged.  The caller's
  arguments are never modified.
* Checkpoints: every byte of the zip headers of a saved checkpoint (of
  each layer class) flipped and truncations at and around every header
  boundary, then, for the time budget, random-mask flips of header bytes,
  a seeded sample of the other bytes, truncations at seeded lengths and
  appended bytes: each load raises CheckpointError or loads a state
  identical to the saved one.

The case counts and run times are printed (``pytest -s``) and checked
against a minimum.  Run this file directly to fuzz longer:
``python tests/test_fuzz.py inputs SEED SECONDS`` (or ``checkpoints``).
"""
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import scipy.sparse as sp

#: CPU seconds each fuzz test runs for (its subprocess stops starting cases
#: then; CPU time, so that a loaded machine runs as many cases)
BUDGET = {"inputs": 2.5, "checkpoints": 1.0}
#: fewest cases a run must have done (a slow machine still does more; the
#: checkpoint fuzz always runs its ~1200 header cases, then samples)
MIN_CASES = {"inputs": 800, "checkpoints": 1000}
SEED = 20240611

D, d = 24, 4
BAD_INDICES = [-1, D, D + 1, 2**31 - 1, 2**31, 2**63 - 1, -2**63]
DOCUMENTED = (TypeError, ValueError, IndexError)
SPARSE = ["csr", "csc", "coo", "bsr", "lil", "dok", "dia"]
#: the layers and call of the last case (to debug a failure)
_LAST = {}


# ------------------------------------------------------------------ helpers
def _rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb else np.linalg.norm(a - b)


def _state(layer):
    out = {k: (v.dtype.str, v.shape, v.tobytes())
           for k, v in layer._checkpoint_arrays().items()}
    for name in ("online_block", "min_abs_r", "single_thread_blas"):
        if hasattr(layer, name):
            out[name] = getattr(layer, name)
    return out


def _freeze(x):
    """A snapshot of an argument, to check that no call modifies it."""
    if sp.issparse(x):
        fmt = x.format
        if fmt == "dok":
            return fmt, repr(sorted(x._dict.items(), key=repr))
        if fmt == "lil":
            return fmt, repr(x.rows.tolist()), repr(x.data.tolist())
        names = {"coo": ("row", "col", "data"), "dia": ("offsets", "data")}.get(
            fmt, ("indptr", "indices", "data"))
        return fmt, x.shape, [pickle.dumps(np.asarray(getattr(x, n))) for n in names]
    if isinstance(x, (tuple, list)):
        return type(x).__name__, [_freeze(v) for v in x]
    if isinstance(x, dict):
        return sorted((k, _freeze(v)) for k, v in x.items())
    return pickle.dumps(x)


def _call(layer, name, args, kwargs):
    try:
        return "ok", getattr(layer, name)(*args, **kwargs)
    except DOCUMENTED as exc:
        return "err", exc


def _arrays(result):
    """The arrays of a result (tuples flattened, None kept as None)."""
    if isinstance(result, tuple):
        return [x for r in result for x in _arrays(r)]
    return [result]


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


# ------------------------------------------------------------ input makers
def _hidden(rng, m):
    H = rng.uniform(-1, 1, (m, d))
    if rng.random() < 0.7:
        return H, "H"
    kind = _pick(rng, ["float32", "list", "fortran", "strided", "negative strides",
                       "int", "float16", "complex", "object", "bool", "nan", "inf",
                       "narrow", "wide", "1-D", "3-D", "scalar"])
    if kind == "float32":
        return H.astype(np.float32), kind
    if kind == "list":
        return H.tolist(), kind
    if kind == "fortran":
        return np.asfortranarray(H), kind
    if kind == "strided":
        big = np.zeros((m, 2 * d))
        big[:, ::2] = H
        return big[:, ::2], kind
    if kind == "negative strides":
        return np.ascontiguousarray(H[::-1, ::-1])[::-1, ::-1], kind
    if kind in ("int", "float16", "complex", "object", "bool"):
        dt = {"int": np.int64, "float16": np.float16, "complex": np.complex128,
              "object": object, "bool": np.bool_}[kind]
        return H.astype(dt), kind
    if kind in ("nan", "inf") and m:
        H[rng.integers(m), rng.integers(d)] = np.nan if kind == "nan" else -np.inf
        return H, kind
    if kind == "narrow":
        return H[:, :-1], kind
    if kind == "wide":
        return np.zeros((m, d + 1)), kind
    if kind == "1-D":
        return H.ravel(), kind
    if kind == "3-D":
        return H[None], kind
    return 0.5, "scalar"


def _index_matrix(rng, m, K):
    idx = rng.integers(0, D, (m, K))
    edge = rng.random((m, K)) < 0.2                   # the valid bounds 0, D-1
    idx[edge] = rng.choice([0, D - 1], size=int(edge.sum()))
    return idx


def _mutate_indices(rng, idx):
    """(indices, description): sometimes a bad value or a bad dtype."""
    r = rng.random()
    if r < 0.2 and idx.size:
        idx = idx.astype(np.int64)
        idx.flat[rng.integers(idx.size)] = _pick(rng, BAD_INDICES)
        return idx, "bad index"
    if r < 0.3:
        dt = _pick(rng, [np.float64, np.bool_, np.uint64, np.int32, np.int8,
                         object, np.uint8])
        return idx.astype(dt), f"indices {np.dtype(dt).name}"
    return idx, ""


def _values(rng, shape):
    vals = rng.uniform(-1, 2, shape)
    vals[rng.random(shape) < 0.1] = 0.0
    r = rng.random()
    if r < 0.06 and vals.size:
        vals.flat[rng.integers(vals.size)] = _pick(rng, [np.nan, np.inf])
        return vals, "non-finite values"
    if r < 0.15:
        dt = _pick(rng, [np.int64, np.float16, np.complex128, object, np.float32,
                         np.bool_])
        return vals.astype(dt), f"values {np.dtype(dt).name}"
    return vals, ""


def _tamper_sparse(rng, Y, fmt, bad):
    """Put the index ``bad`` into the raw arrays of Y (scipy does not check
    them)."""
    if fmt in ("csr", "csc", "bsr") and Y.indices.size:
        Y.indices = Y.indices.astype(np.int64)
        Y.indices[rng.integers(Y.indices.size)] = bad
    elif fmt == "coo" and Y.nnz:
        which = int(rng.integers(2))
        arr = (Y.row if which == 0 else Y.col).astype(np.int64)
        arr[rng.integers(arr.size)] = bad
        if which == 0:
            Y.row = arr
        else:
            Y.col = arr
    elif fmt == "lil":
        rows = [i for i, r in enumerate(Y.rows) if r]
        if rows:
            i = _pick(rng, rows)
            Y.rows[i][rng.integers(len(Y.rows[i]))] = bad
    elif fmt == "dok":
        row = int(rng.integers(Y.shape[0])) if Y.shape[0] and rng.random() < 0.5 else bad
        Y._dict[(row, bad)] = 1.0
    elif fmt == "dia" and Y.offsets.size:
        Y.offsets = Y.offsets.astype(np.int64)
        Y.offsets[rng.integers(Y.offsets.size)] = bad


def _targets(rng, m):
    form = _pick(rng, ["int", "int", "list", "tuple", "tuple", "tuple None"] + SPARSE)
    kind = _pick(rng, ["array", "matrix"])
    if form in ("int", "list"):
        idx, what = _mutate_indices(rng, _index_matrix(rng, m, 1)[:, 0])
        if rng.random() < 0.05:
            idx, what = idx[:-1] if m else np.zeros(1, int), "wrong length"
        return (idx.tolist() if form == "list" and idx.dtype != object else idx), \
            f"{form} {what}"
    K = int(rng.integers(0, 4))
    idx = _index_matrix(rng, m, K)
    if form.startswith("tuple"):
        idx2, what = _mutate_indices(rng, idx)
        vals, vwhat = (None, "") if form == "tuple None" else _values(rng, (m, K))
        if rng.random() < 0.05:
            idx2, what = idx2.ravel(), "1-D indices"
        return (idx2, vals), f"{form} K={K} {what} {vwhat}"
    vals, vwhat = _values(rng, (m * K,))
    shape = (m, D)
    if rng.random() < 0.05:
        shape, vwhat = (m + 1, D) if rng.random() < 0.5 else (m, D + 1), "wrong shape"
    rows = np.repeat(np.arange(m), K)
    try:
        coo = sp.coo_array((vals, (rows, idx.ravel())), shape=shape)
        Y = getattr(sp, f"{form}_{kind}")(coo)
    except (TypeError, ValueError):          # scipy refuses e.g. object values
        return sp.csr_array((m, D)), f"{form} (empty)"
    what = ""
    if rng.random() < 0.25:
        bad = _pick(rng, BAD_INDICES + [0, D - 1])
        _tamper_sparse(rng, Y, form, bad)
        what = f"tampered index {bad}"
    return Y, f"{form}_{kind} K={K} {what} {vwhat}"


def _real(rng, low, high, invalid=()):
    """A valid number in [low, high] or a mutated one."""
    r = rng.random()
    if r < 0.85:
        v = float(rng.uniform(low, high))
        return _pick(rng, [v, v, np.float32(v), np.array(v), low])
    return _pick(rng, [-1e-3, np.nan, np.inf, -np.inf, True, "0.1", None, 0.1j,
                      np.array([0.1]), 10**400, *invalid])


def _mode(rng):
    if rng.random() < 0.85:
        return _pick(rng, ["batch", "online", np.str_("online")])
    return _pick(rng, ["sgd", None, 1, b"batch", "Online"])


# ------------------------------------------------------------------- layers
def _pair(rng):
    from fastsparse import FactoredOutputLayer, NaiveOutputLayer
    loss = _pick(rng, ["squared", "squared", "spherical_softmax",
                       "taylor_softmax", "z_loss"])
    bias = bool(rng.random() < 0.5)
    W0 = rng.standard_normal((D, d)) / 2
    # A tight health control: with the default bound on U's condition
    # number (1e4 in float64) the M = V^T V path may lose cond^2 eps = 1e-8
    # (the numerics, not the validation under test here).
    F = FactoredOutputLayer.from_weights(W0, bias=bias, loss=loss,
                                         stability={"max_cond": 100.0,
                                                    "check_every": 16})
    N = NaiveOutputLayer.from_weights(W0, bias=bias, loss=loss)
    F.online_block = _pick(rng, [0, 1, 2, 3, 64])
    return F, N, f"{loss} bias={bias} block={F.online_block}"


def _operation(rng, F):
    m = int(rng.integers(0, 7))
    H, hwhat = _hidden(rng, m)
    op = _pick(rng, ["step", "step", "step", "loss_and_grad", "forward", "backward",
                     "outputs", "predict_proba", "topk", "setting"])
    if op in ("step", "loss_and_grad"):
        T, twhat = _targets(rng, m)
        if op == "loss_and_grad":
            return op, (H, T), {}, f"{hwhat} | {twhat}"
        lr = _real(rng, 0.0, 0.05)
        kw = {}
        if rng.random() < 0.7:
            kw["mode"] = _mode(rng)
        if rng.random() < 0.4:
            kw["weight_decay"] = _real(rng, 0.0, 0.5, invalid=(1e3,))  # lr wd >= 1
        return op, (H, T, lr), kw, f"{hwhat} | {twhat} | lr={lr!r} {kw!r}"
    if op in ("forward", "backward"):
        K = int(rng.integers(1, 4))
        idx, iwhat = _mutate_indices(rng, _index_matrix(rng, m, K))
        if op == "forward":
            return op, (H, idx), {}, f"{hwhat} | {iwhat}"
        ga, gwhat = _values(rng, (m, K))
        gq = rng.uniform(-1, 1, m)
        gs = None if rng.random() < 0.5 or not F.track_sum else rng.uniform(-1, 1, m)
        if rng.random() < 0.1:
            gq = _pick(rng, [gq[:-1] if m else np.zeros(1), gq + 1j, gq.astype(object),
                             np.full(m, np.nan)])
            gwhat += " bad grad_q"
        if rng.random() < 0.05:
            gs = rng.uniform(-1, 1, m) + 1                # non-zero without s?
            gwhat += " grad_s"
        lr = _real(rng, 0.0, 0.05)
        kw = {"weight_decay": _real(rng, 0.0, 0.5, invalid=(1e3,))} \
            if rng.random() < 0.3 else {}
        return op, (H, idx, ga, gq, gs, lr), kw, f"{hwhat} | {iwhat} {gwhat} lr={lr!r}"
    if op in ("outputs", "predict_proba"):
        rows = None
        if rng.random() < 0.7:
            rows, what = _mutate_indices(rng, _index_matrix(rng, 1, int(rng.integers(0, 5)))[0])
            if rng.random() < 0.05:
                rows, what = rows[None], "2-D rows"
        else:
            what = "all rows"
        return op, (H, rows), {}, f"{hwhat} | {what}"
    if op == "topk":
        k = _pick(rng, [1, 3, D, int(rng.integers(1, D + 1)), 0, D + 1, 2.5, True,
                        -1, "3", np.int64(2)])
        return op, (H, k), {}, f"{hwhat} | k={k!r}"
    name = _pick(rng, ["online_block", "min_abs_r", "single_thread_blas"])
    value = {"online_block": _pick(rng, [0, 1, 7, 64, 65536, -1, 65537, 2**31 - 1,
                                         2**31, 2.0, True, "8", None]),
             "min_abs_r": _pick(rng, [1e-3, 0.5, 1e-9, np.float32(0.01), 0, -1, 1,
                                      np.nan, np.inf, "0.1", True, None]),
             "single_thread_blas": _pick(rng, [True, False, np.True_, "no", 0, None])
             }[name]
    return "setting", (name, value), {}, f"{name} = {value!r}"


def fuzz_inputs(seed, budget, max_cases=100_000):
    from fastsparse import StepRefusedError
    rng = np.random.default_rng(seed)
    counts = Counter()
    t0 = time.perf_counter()
    c0 = time.process_time()    # CPU time: the same cases on a loaded machine
    F = N = None
    case = 0
    while case < max_cases and time.process_time() - c0 < budget:
        if case % 150 == 0:
            F, N, config = _pair(rng)
        op, args, kwargs, what = _operation(rng, F)
        where = f"case {case} (seed {seed}) {config}: {op} {what}"
        _LAST.update(F=F, N=N, op=op, args=args, kwargs=kwargs)
        before_F, before_N = _state(F), _state(N)
        frozen = _freeze((args, kwargs))
        if op == "setting":
            name, value = args
            try:
                setattr(F, name, value)
                assert getattr(F, name) == value, where
                counts["setting ok"] += 1
            except DOCUMENTED:
                assert _state(F) == before_F, where
                counts["setting refused"] += 1
            case += 1
            continue
        with np.errstate(all="ignore"):
            out_F = _call(F, op, args, kwargs)
            out_N = _call(N, op, args, kwargs)
        assert _freeze((args, kwargs)) == frozen, f"{where}: arguments modified"
        for layer, out, before in ((F, out_F, before_F), (N, out_N, before_N)):
            if out[0] == "err":
                assert _state(layer) == before, \
                    f"{where}: {type(layer).__name__} changed state before {out[1]!r}"
        if out_F[0] == "ok" and out_N[0] == "ok":
            a, b = _arrays(out_F[1]), _arrays(out_N[1])
            assert len(a) == len(b), where
            for x, y in zip(a, b):
                assert (x is None) == (y is None), where
                if x is not None:
                    assert x.shape == y.shape and x.dtype == y.dtype, where
                    if not (op == "topk" and x.dtype.kind == "i"):
                        err = _rel_err(x, y)
                        assert err < 1e-8, f"{where}: results differ by {err:.3g}"
            if op in ("step", "backward"):
                err = _rel_err(F.weights(), N.weights())
                assert err < 1e-8, f"{where}: weights differ by {err:.3g}"
                if F.has_bias:
                    assert _rel_err(F.bias(), N.bias()) < 1e-8, where
            else:
                assert _state(F) == before_F and _state(N) == before_N, where
            counts[f"{op} ok"] += 1
        elif out_F[0] == "err" and out_N[0] == "err":
            assert type(out_F[1]) is type(out_N[1]), \
                f"{where}: {out_F[1]!r} vs {out_N[1]!r}"
            counts[f"{op} refused"] += 1
        elif out_F[0] == "err" and (isinstance(out_F[1], StepRefusedError)
                                    or "refused" in str(out_F[1])):
            # the factored layer refuses a near-singular update the dense
            # layer can apply: both states are valid; start again in sync
            counts["near-singular step refused by the factored layer"] += 1
            F, N, config = _pair(rng)
        else:
            raise AssertionError(f"{where}: factored {out_F!r}, naive {out_N!r}")
        case += 1
    return {"cases": case, "seconds": round(time.perf_counter() - t0, 2),
            "outcomes": dict(sorted(counts.items()))}


# -------------------------------------------------------------- checkpoints
def _header_positions(data):
    """Byte positions of the zip structure of an archive written by
    numpy.savez (local headers; central directory and end records, which
    follow the last member's data), and where the central directory starts."""
    import io
    import zipfile
    pos, cd = set(), 0
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            h = info.header_offset
            n = int.from_bytes(data[h + 26:h + 28], "little")
            m = int.from_bytes(data[h + 28:h + 30], "little")
            pos.update(range(h, h + 30 + n + m))
            cd = max(cd, h + 30 + n + m + info.compress_size)
    pos.update(range(cd, len(data)))
    return sorted(pos), cd


def _layers():
    from fastsparse import FactoredOutputLayer, NaiveOutputLayer
    rng = np.random.default_rng(0)
    F = FactoredOutputLayer.from_weights(rng.standard_normal((40, 3)) / 2, bias=True,
                                         loss="taylor_softmax", dtype=np.float32)
    N = NaiveOutputLayer.from_weights(rng.standard_normal((40, 3)) / 2, bias=True,
                                      dtype=np.float64)
    for layer in (F, N):
        for _ in range(5):
            layer.step(np.tanh(rng.standard_normal((4, 3))), rng.integers(0, 40, 4),
                       0.05, mode="online")
    F.health()
    F.online_block = 5
    return F, N


def fuzz_checkpoints(seed, budget):
    """Every header byte flipped (0xFF) and truncations around every header
    boundary always run; random-mask flips of header bytes, a seeded sample
    of the other bytes, random truncations and appended bytes run while
    ``budget`` seconds last."""
    from fastsparse import CheckpointError
    rng = np.random.default_rng(seed)
    counts = Counter()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        plans = []
        for layer in _layers():
            cls = type(layer)
            ref_path = os.path.join(tmp, f"{cls.__name__}.npz")
            layer.save(ref_path)
            data = open(ref_path, "rb").read()
            headers, cd = _header_positions(data)
            others = sorted(set(range(len(data))) - set(headers))
            bounds = {0, cd, len(data)} | {p for p in headers if p - 1 not in headers}
            cuts = {c + k for c in bounds for k in (-1, 0, 1) if 0 <= c + k < len(data)}
            required = [("header byte flipped", p, 0xFF) for p in headers]
            required += [("truncated at a header boundary", c, None)
                         for c in sorted(cuts)]
            optional = [("header byte xor random mask", p, int(rng.integers(1, 255)))
                        for p in headers]
            optional += [("other byte xor random mask", int(p), int(rng.integers(1, 256)))
                         for p in rng.choice(others, size=min(300, len(others)),
                                             replace=False)]
            optional += [("truncated at a random length", int(c), None)
                         for c in rng.integers(0, len(data), 100)]
            optional += [("bytes appended", 0, b"\0"),
                         ("bytes appended", 0, b"PK\x05\x06" + bytes(18)),
                         ("bytes appended", 0,
                          bytes(rng.integers(0, 256, 1000, dtype=np.uint8)))]
            order = rng.permutation(len(optional))
            plans.append((cls, data, cls.load(ref_path), required,
                          [optional[i] for i in order]))
        path = os.path.join(tmp, "case.npz")

        def run(cls, data, ref, kind, p, arg):
            buf = bytearray(data)
            if "byte" in kind and "appended" not in kind:
                buf[p] ^= arg
            elif kind.startswith("truncated"):
                del buf[p:]
            else:
                buf += arg
            with open(path, "wb") as f:
                f.write(buf)
            where = f"{cls.__name__} {kind} at {p} ({arg!r})"
            try:
                got = cls.load(path)
            except CheckpointError:
                return "refused"
            except Exception as exc:
                raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc
            assert _state(got) == _state(ref), f"{where}: loaded a different state"
            assert got._checkpoint_meta() == ref._checkpoint_meta(), where
            assert repr(got) == repr(ref), where
            return "loaded identical"

        for cls, data, ref, required, _ in plans:
            for kind, p, arg in required:
                counts[f"{cls.__name__}: {kind}: {run(cls, data, ref, kind, p, arg)}"] += 1
        for cls, data, ref, _, optional in plans:
            stop = time.process_time() + budget / len(plans)
            for kind, p, arg in optional:
                if time.process_time() > stop:
                    break
                counts[f"{cls.__name__}: {kind}: {run(cls, data, ref, kind, p, arg)}"] += 1
    return {"cases": sum(counts.values()), "seconds": round(time.perf_counter() - t0, 2),
            "outcomes": dict(sorted(counts.items()))}


# -------------------------------------------------------------------- tests
def _run(which, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", os.path.abspath(__file__), which,
         str(SEED), str(BUDGET[which])],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, (
        f"fuzz process exited with {proc.returncode}\n--- stdout\n"
        f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nfuzz {which}: {report['cases']} cases in {report['seconds']} s")
    for key, n in report["outcomes"].items():
        print(f"  {key}: {n}")
    assert report["cases"] >= MIN_CASES[which], report
    return report


def test_fuzz_inputs(tmp_path):
    report = _run("inputs", tmp_path)
    outcomes = report["outcomes"]
    # both outcomes are exercised for every operation
    for op in ("step", "loss_and_grad", "forward", "backward", "outputs", "topk",
               "setting"):
        assert outcomes.get(f"{op} ok", 0) > 0 and outcomes.get(f"{op} refused", 0) > 0, op


def test_fuzz_checkpoint_bytes(tmp_path):
    report = _run("checkpoints", tmp_path)
    for cls in ("FactoredOutputLayer", "NaiveOutputLayer"):
        assert report["outcomes"].get(f"{cls}: header byte flipped: refused", 0) > 100
        assert report["outcomes"].get(f"{cls}: other byte xor random mask: refused", 0) > 0


if __name__ == "__main__":
    which, seed, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    fuzz = {"inputs": fuzz_inputs, "checkpoints": fuzz_checkpoints}[which]
    print(json.dumps(fuzz(seed, budget)))
