"""Checkpoints and weight export against hostile files, full disks and
kills: every bad file raises CheckpointError (nothing else), nothing is
allocated before the file's declared sizes are checked, writes are atomic
(no partial or temporary file left, mode kept, fsynced).  (The round trip
itself is tested in test_io.py.)"""
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastsparse
from fastsparse import (CheckpointError, FactoredOutputLayer, NaiveOutputLayer,
                        _checkpoint)
from _helpers import assert_ran, run_isolated

LAYERS = [FactoredOutputLayer, NaiveOutputLayer]


def _trained(cls=FactoredOutputLayer, loss="squared", bias=True, dtype=np.float32):
    rng = np.random.default_rng(0)
    layer = cls.from_weights(rng.standard_normal((300, 6)) / 3, bias=bias,
                             loss=loss, dtype=dtype)
    for _ in range(10):
        layer.step(np.tanh(rng.standard_normal((4, 6))).astype(dtype),
                   rng.integers(0, 300, 4), 0.05, mode="online")
    return layer


def _contents(path):
    """(meta, arrays) of a checkpoint, read without validation."""
    with np.load(path) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    return meta, arrays


def _digest(arr):
    if arr.dtype == object:
        return hashlib.sha256(repr(arr).encode()).hexdigest()
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8)).hexdigest()


def _craft(path, meta, arrays, writer=np.savez):
    """Write a checkpoint whose digests are recomputed (unless the test
    changed them): only the loader's own checks can refuse it."""
    if meta.get("digests") == "recompute":
        meta = dict(meta, digests={k: _digest(v) for k, v in arrays.items()})
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        writer(f, __meta__=blob, **arrays)


def _same_state(a, b):
    sa, sb = a._checkpoint_arrays(), b._checkpoint_arrays()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and sa[k].tobytes() == sb[k].tobytes() for k in sa
    ) and a._checkpoint_meta() == b._checkpoint_meta()


# ---- inconsistent or foreign contents (digests recomputed) ----------------
def _set(key, value):
    def edit(meta, arrays):
        meta[key] = value
    return edit


def _drop(key):
    def edit(meta, arrays):
        del meta[key]
    return edit


def _array(name, fn):
    def edit(meta, arrays):
        arrays[name] = fn(arrays[name])
    return edit


def _perturb_M(M):
    M = M.copy()
    M[0, 1] += 0.2 * np.abs(M).max()          # in the upper triangle it keeps
    return M


def _drop_array(name):
    def edit(meta, arrays):
        del arrays[name]
    return edit


def _stability(fn):
    def edit(meta, arrays):
        fn(meta["stability"])
    return edit


FACTORED_CASES = {
    "M != V^T V": (_array("M", _perturb_M), r"M is not V\^T V"),
    "M scaled": (_array("M", lambda M: M * 1.01), r"M is not V\^T V"),
    "U Uinv != I": (_array("Uinv", lambda A: A * 2), r"U times its saved inverse"),
    # (a wrong item size is already caught by the member's size)
    "float16 V": (_array("V", lambda V: V.astype(np.float16)),
                  r"member 'V' has \d+ bytes, not those of a float32 array"),
    "complex V": (_array("V", lambda V: V.astype(np.complex64)),
                  r"member 'V' has \d+ bytes, not those of a float32 array"),
    "int32 V": (_array("V", lambda V: V.view(np.int32)), r"array 'V' has dtype <i4"),
    "big-endian V": (_array("V", lambda V: V.astype(">f4")), r"array 'V' has dtype >f4"),
    "Fortran V": (_array("V", np.asfortranarray), r"Fortran order"),
    "object V": (_array("V", lambda V: V.astype(object)), r"member 'V' has|array 'V' has dtype \|O"),
    "short V": (_array("V", lambda V: V[:-1]), r"array 'V' has shape \(299, 7\), expected \(300, 7\)"),
    "much shorter V": (_array("V", lambda V: V[:-100]), r"member 'V' has \d+ bytes"),
    "1-D U": (_array("U", lambda U: U.ravel()[:49]), r"member 'U'|array 'U'"),
    "NaN in U": (_array("U", lambda U: np.where(U == U.max(), np.nan, U)), r"non-finite"),
    "missing Uinv": (_drop_array("Uinv"), r"digests do not list"),
    "extra array": (lambda m, a: a.update(X=np.zeros(3, np.float32)), r"digests do not list"),
    "min_abs_r = 0": (_set("min_abs_r", 0), r"invalid metadata 'min_abs_r'"),
    "min_abs_r = -1": (_set("min_abs_r", -1.0), r"invalid metadata 'min_abs_r'"),
    "min_abs_r = NaN": (_set("min_abs_r", float("nan")), r"invalid metadata 'min_abs_r'"),
    "min_abs_r str": (_set("min_abs_r", "0.001"), r"invalid metadata 'min_abs_r'"),
    "online_block huge": (_set("online_block", 2**31 - 1), r"invalid metadata 'online_block'"),
    "single_thread_blas str": (_set("single_thread_blas", "yes"),
                               r"invalid metadata 'single_thread_blas'"),
    "n_outputs str": (_set("n_outputs", "300"), r"invalid metadata 'n_outputs'"),
    "n_outputs float": (_set("n_outputs", 300.0), r"invalid metadata 'n_outputs'"),
    "n_outputs bool": (_set("n_outputs", True), r"invalid metadata 'n_outputs'"),
    "n_outputs wrong": (_set("n_outputs", 299), r"array 'V' has shape \(300, 7\), expected \(299, 7\)"),
    "n_hidden huge": (_set("n_hidden", 2**31), r"invalid metadata 'n_hidden'"),
    "dtype float16": (_set("dtype", "float16"), r"invalid metadata 'dtype'"),
    "dtype number": (_set("dtype", 5), r"invalid metadata 'dtype'"),
    "dtype float64": (_set("dtype", "float64"), r"member '\w+' has \d+ bytes, not those of a float64"),
    "has_bias str": (_set("has_bias", "yes"), r"invalid metadata 'has_bias'"),
    "has_bias wrong": (_set("has_bias", False), r"member 'V'|array 'V'"),
    "track_sum wrong": (_set("track_sum", True), r"array 'omega' has shape \(0,\), expected \(7,\)"),
    "loss str": (_set("loss", "squared"), r"invalid metadata 'loss'"),
    "loss unknown": (_set("loss", {"name": "softmax"}), r"unknown loss 'softmax'"),
    "loss bad param": (_set("loss", {"name": "spherical_softmax", "eps": -1}),
                       r"invalid parameters of the 'spherical_softmax' loss"),
    "loss extra param": (_set("loss", {"name": "squared", "eps": 1.0}),
                         r"invalid parameters of the 'squared' loss"),
    "format": (_set("format", "other"), r"not a fastsparse checkpoint"),
    "version": (_set("version", 2), r"format version 2"),
    "class": (_set("cls", "Other"), r"a Other checkpoint, not a FactoredOutputLayer"),
    "digests list": (_set("digests", []), r"digests do not list"),
    "stability str": (_set("stability", "on"), r"invalid metadata 'stability'"),
    "knob missing": (_stability(lambda s: s["knobs"].pop("max_cond")),
                     r"invalid metadata 'stability': knobs"),
    "knob str": (_stability(lambda s: s["knobs"].update(check_every="8")),
                 r"invalid metadata 'stability'"),
    "knob zero": (_stability(lambda s: s["knobs"].update(check_every=0)),
                  r"invalid metadata 'stability'"),
    "counter negative": (_stability(lambda s: s["counters"].update(steps=-1)),
                         r"counter 'steps'"),
    "interval 0": (_stability(lambda s: s["counters"].update(interval=0)),
                   r"check interval"),
    "estimate str": (_stability(lambda s: s["estimates"].update(cond="x")), r"estimates"),
    "vector length": (_stability(lambda s: s["vectors"].update(
        x_max=[1.0] * 3, x_min=[1.0] * 3, probe=[1.0] * 3)), r"power-iteration vectors"),
    "vector partly None": (_stability(lambda s: s["vectors"].update(
        x_max=[1.0] * 7, x_min=None, probe=[1.0] * 7)), r"power-iteration vectors"),
    "knob min_abs_r = 0": (_stability(lambda s: s["knobs"].update(min_abs_r=0)),
                           r"invalid metadata 'stability'.*min_abs_r"),
    "knob min_abs_r = 1": (_stability(lambda s: s["knobs"].update(min_abs_r=1.0)),
                           r"invalid metadata 'stability'.*min_abs_r"),
    "knob unknown": (_stability(lambda s: s["knobs"].update(bogus=1)),
                     r"invalid metadata 'stability': knobs"),
    "bound negative": (_stability(lambda s: s["bounds"].update(sinv2=-1.0)),
                       r"invalid metadata 'stability': bounds"),
    "subspace shape": (_stability(lambda s: s["vectors"].update(X=[[1.0]] * 3)),
                       r"power-iteration vectors"),
}
for _key in ("format", "version", "cls", "dtype", "n_outputs", "n_hidden",
             "has_bias", "track_sum", "loss", "digests", "stability"):
    FACTORED_CASES[f"no {_key}"] = (_drop(_key), r"\S")


@pytest.mark.parametrize("case", sorted(FACTORED_CASES))
def test_inconsistent_or_foreign_factored_file_is_refused(case, tmp_path):
    layer = _trained()
    layer.health()                       # fills the power-iteration vectors
    path = tmp_path / "layer.npz"
    layer.save(path)
    meta, arrays = _contents(path)
    meta["digests"] = "recompute"
    edit, pattern = FACTORED_CASES[case]
    edit(meta, arrays)
    _craft(path, meta, arrays)
    with pytest.raises(CheckpointError, match=pattern):
        FactoredOutputLayer.load(path)


def test_sv_must_be_the_column_sums_of_V(tmp_path):
    layer = _trained(loss="taylor_softmax")
    path = tmp_path / "layer.npz"
    layer.save(path)
    meta, arrays = _contents(path)
    meta["digests"] = "recompute"
    arrays["sv"] = arrays["sv"] + 0.1
    _craft(path, meta, arrays)
    with pytest.raises(CheckpointError, match="sv is not the column sums of V"):
        FactoredOutputLayer.load(path)


@pytest.mark.parametrize("edit,pattern", [
    (_array("W", lambda W: np.full_like(W, 1e20)), r"Gram matrix"),
    (_array("W", lambda W: np.where(W == W.max(), np.inf, W)), r"non-finite"),
    (_array("b", lambda b: b.astype(np.float64)), r"array 'b' has dtype <f8"),
    (_drop_array("b"), r"digests do not list"),
    (_set("has_bias", False), r"digests do not list|do not match"),
])
def test_inconsistent_naive_file_is_refused(edit, pattern, tmp_path):
    path = tmp_path / "layer.npz"
    _trained(NaiveOutputLayer).save(path)
    meta, arrays = _contents(path)
    meta["digests"] = "recompute"
    edit(meta, arrays)
    _craft(path, meta, arrays)
    with pytest.raises(CheckpointError, match=pattern):
        NaiveOutputLayer.load(path)


def test_legitimate_drift_is_accepted(tmp_path):
    """The consistency tolerances leave room for the rounding of a long
    float32 run (M is updated, never recomputed)."""
    rng = np.random.default_rng(3)
    layer = FactoredOutputLayer(2000, 16, dtype=np.float32, seed=0)
    for _ in range(60):      # 1920 examples, 151 renormalisations
        layer.step(np.tanh(rng.standard_normal((32, 16))).astype(np.float32),
                   rng.integers(0, 2000, 32), 0.05, mode="online")
    layer.save(tmp_path / "l.npz")
    for _ in range(5):      # the probes are random: several loads
        assert _same_state(FactoredOutputLayer.load(tmp_path / "l.npz"), layer)


# ---- memory: declared sizes are checked before allocating ------------------
def _bomb(path, n_rows, writer):
    """A checkpoint declaring a V of n_rows rows of zeros (valid digests)."""
    meta, arrays = _contents(path)
    d = arrays["V"].shape[1]
    meta["n_outputs"] = n_rows
    digests = {k: _digest(v) for k, v in arrays.items() if k != "V"}
    h = hashlib.sha256()
    chunk = np.zeros((1 << 14, d), dtype=np.float32)
    for start in range(0, n_rows, chunk.shape[0]):
        h.update(chunk[:min(chunk.shape[0], n_rows - start)].tobytes())
    digests["V"] = h.hexdigest()
    meta["digests"] = digests
    with zipfile.ZipFile(path, "w", compression=writer) as z:
        for name, arr in arrays.items():
            if name == "V":
                with z.open("V.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_1_0(f, {
                        "descr": "<f4", "fortran_order": False, "shape": (n_rows, d)})
                    for start in range(0, n_rows, chunk.shape[0]):
                        f.write(chunk[:min(chunk.shape[0], n_rows - start)].tobytes())
            else:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr)
                z.writestr(name + ".npy", buf.getvalue())
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
        z.writestr("__meta__.npy", buf.getvalue())


@pytest.mark.parametrize("case", ["compressed", "declared_larger_than_file"])
def test_huge_declared_arrays_cost_nothing(case, tmp_path):
    """A small file declaring a 64 MiB V (a deflated run of zeros, or a
    stored member whose metadata and header claim more rows than it holds)
    is refused before anything of that size is allocated (before: 1 GB and
    8 s for a 973 KiB file)."""
    path = tmp_path / "layer.npz"
    _trained(bias=False, dtype=np.float32).save(path)
    if case == "compressed":
        _bomb(path, 1 << 21, zipfile.ZIP_DEFLATED)          # 2M x 6 x 4 B
        assert path.stat().st_size < 1 << 20
        pattern = "is compressed"
    else:
        meta, arrays = _contents(path)
        meta["n_outputs"] = 1 << 21                         # V keeps 300 rows
        meta["digests"] = "recompute"
        _craft(path, meta, arrays)
        pattern = "member 'V' has"
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=pattern):
            FactoredOutputLayer.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    assert time.perf_counter() - t0 < 2


# ---- damaged zip structure --------------------------------------------------
def _central_entries(data):
    eocd = data.rindex(b"PK\x05\x06")
    offset = int.from_bytes(data[eocd + 16:eocd + 20], "little")
    pos, out = offset, []
    while data[pos:pos + 4] == b"PK\x01\x02":
        out.append(pos)
        n, m, k = (int.from_bytes(data[pos + i:pos + i + 2], "little") for i in (28, 30, 32))
        pos += 46 + n + m + k
    return out


@pytest.mark.parametrize("field,value,was", [
    (10, b"\x63\x00", "NotImplementedError"),     # compression method 99
    (10, b"\x08\x00", "a deflate stream"),        # deflated (it is not)
    (8, b"\x01\x00", "RuntimeError"),             # encrypted flag
    (6, b"\x63\x00", "NotImplementedError"),      # version needed 9.9
])
def test_damaged_zip_headers_raise_checkpoint_error(field, value, was, tmp_path):
    path = tmp_path / "layer.npz"
    _trained().save(path)
    data = bytearray(path.read_bytes())
    for entry in _central_entries(bytes(data)):
        bad = bytearray(data)
        bad[entry + field:entry + field + 2] = value
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError):
            FactoredOutputLayer.load(path)


def test_not_checkpoints(tmp_path):
    np.save(tmp_path / "W.npy", np.ones((3, 3)))
    with pytest.raises(CheckpointError, match="not a readable fastsparse checkpoint"):
        FactoredOutputLayer.load(tmp_path / "W.npy")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CheckpointError):
        FactoredOutputLayer.load(tmp_path / "empty.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(CheckpointError, match="no metadata record"):
        FactoredOutputLayer.load(tmp_path / "other.npz")
    with pytest.raises(CheckpointError, match="not a regular file"):
        FactoredOutputLayer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        FactoredOutputLayer.load(tmp_path / "missing.npz")
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.npz")
    code = f"""
    import fastsparse
    try:
        fastsparse.FactoredOutputLayer.load({str(tmp_path / 'fifo.npz')!r})
    except fastsparse.CheckpointError as exc:
        print(exc)
    """
    try:
        proc = run_isolated(code, tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a FIFO blocked")
    assert_ran(proc)
    assert "not a regular file" in proc.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_raises_permission_error(tmp_path):
    path = tmp_path / "layer.npz"
    _trained().save(path)
    path.chmod(0)
    with pytest.raises(PermissionError):
        FactoredOutputLayer.load(path)


# ---- settings in the file ---------------------------------------------------
def test_settings_are_saved_and_older_files_load_with_defaults(tmp_path):
    layer = _trained()
    layer.online_block, layer.single_thread_blas, layer.min_abs_r = 17, False, 0.01
    path = tmp_path / "layer.npz"
    layer.save(path)
    loaded = FactoredOutputLayer.load(path)
    assert (loaded.online_block, loaded.single_thread_blas, loaded.min_abs_r) == \
        (17, False, 0.01)
    assert _same_state(loaded, layer)
    meta, arrays = _contents(path)
    del meta["online_block"], meta["single_thread_blas"]     # as written before
    meta["digests"] = "recompute"
    _craft(path, meta, arrays)
    old = FactoredOutputLayer.load(path)
    assert (old.online_block, old.single_thread_blas, old.min_abs_r) == (64, True, 0.01)


# ---- writing: paths, modes, temporaries, fsync, full disks -----------------
def _writers(layer):
    return {"save": layer.save, "export_weights": layer.export_weights}


@pytest.mark.parametrize("how", ["save", "export_weights"])
def test_bad_target_paths_are_refused(how, tmp_path, monkeypatch):
    write = _writers(_trained())[how]
    monkeypatch.chdir(tmp_path / ".")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(ValueError, match="empty path"):
        write("")
    with pytest.raises(IsADirectoryError):
        write(tmp_path)
    with pytest.raises(IsADirectoryError):
        write(str(tmp_path / "new") + os.sep)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(ValueError, match="not a regular file"):
            write(tmp_path / "fifo")
    assert sorted(os.listdir(tmp_path)) == sorted(["sub"] + (["fifo"] if hasattr(os, "mkfifo") else []))
    assert os.listdir(tmp_path / "sub") == []


@pytest.mark.parametrize("how", ["save", "export_weights"])
def test_file_mode_is_kept(how, tmp_path):
    write = _writers(_trained())[how]
    path = tmp_path / "out"
    old = os.umask(0o027)
    try:
        write(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640    # new file: the umask's
        os.umask(0o022)
        path.chmod(0o600)
        write(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600    # was 0644 after a save
        path.chmod(0o444)
        write(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    finally:
        os.umask(old)
    # through a symbolic link: the file it points to is replaced, the link stays
    link = tmp_path / "link"
    link.symlink_to(path)
    write(link)
    assert link.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o444


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="only root can give a file to another user")
@pytest.mark.parametrize("how", ["save", "export_weights"])
def test_file_owner_is_kept(how, tmp_path):
    write = _writers(_trained())[how]
    path = tmp_path / "out"
    write(path)
    os.chown(path, 12345, 23456)
    write(path)
    assert (path.stat().st_uid, path.stat().st_gid) == (12345, 23456)


@pytest.mark.parametrize("how", ["save", "export_weights"])
def test_fsync_of_file_then_rename_then_directory(how, tmp_path, monkeypatch):
    write = _writers(_trained())[how]
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync " + ("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write(tmp_path / "out")
    assert events == ["fsync file", "rename", "fsync dir"]


@pytest.mark.parametrize("how", ["save", "export_weights"])
@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_leaves_no_file(how, where, tmp_path, monkeypatch):
    """ENOSPC while writing or flushing: OSError, the previous file intact,
    no temporary file left."""
    layer = _trained()
    write = _writers(layer)[how]
    path = tmp_path / "out"
    write(path)
    before = path.read_bytes()
    layer.step(np.full((1, 6), 0.1, dtype=np.float32), np.array([1]), 0.1)

    def enospc(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", enospc)
    else:
        real_fdopen = os.fdopen

        class Full(io.RawIOBase):
            def __init__(self, f):
                self.f, self.n = f, 0

            def write(self, b):
                self.n += len(b)
                if self.n > 2000:
                    enospc()
                return self.f.write(b)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        write(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out"]


FSIZE_CODE = r"""
import os, resource
import numpy as np, fastsparse
layer = fastsparse.NaiveOutputLayer(20000, 8, seed=0)     # W: 640 KB
small = fastsparse.NaiveOutputLayer(10, 8, seed=0)
small.export_weights("W.npy"); small.save("L.npz")
before = {n: open(n, "rb").read() for n in ("W.npy", "L.npz")}
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
for write, name in ((layer.export_weights, "W.npy"), (layer.save, "L.npz")):
    try:
        write(name)
    except OSError as exc:
        print(name, "OSError", exc.errno)
    else:
        raise AssertionError(name + " written")
assert sorted(os.listdir(".")) == ["L.npz", "W.npy"], os.listdir(".")
assert {n: open(n, "rb").read() for n in ("W.npy", "L.npz")} == before
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE")
def test_file_size_limit_leaves_no_file(tmp_path):
    """A real write failure (EFBIG past RLIMIT_FSIZE, the unprivileged
    stand-in for a full disk): OSError, previous files intact, nothing else."""
    proc = run_isolated(FSIZE_CODE, tmp_path)
    assert_ran(proc)
    assert proc.stdout.count("OSError") == 2, proc.stdout


TMPFS_CODE = r"""
import os, sys
import numpy as np, fastsparse
mnt = sys.argv[1] if len(sys.argv) > 1 else {mnt!r}
layer = fastsparse.NaiveOutputLayer(20000, 8, seed=0)     # 640 KB > 64 KiB
for write, name in ((layer.export_weights, "W.npy"), (layer.save, "L.npz")):
    try:
        write(os.path.join(mnt, name))
    except OSError as exc:
        print(name, "OSError", exc.errno)
    else:
        raise AssertionError(name + " written")
assert os.listdir(mnt) == [], os.listdir(mnt)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0
                    or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_full_tmpfs_leaves_no_file(tmp_path):
    """A real full file system (a 64 KiB tmpfs): export_weights used to die
    of SIGBUS there (it wrote through a memory map) leaving a partial file."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = run_isolated(TMPFS_CODE.format(mnt=str(mnt)), tmp_path)
        assert_ran(proc)
        assert proc.stdout.count(f"OSError {errno.ENOSPC}") == 2, proc.stdout
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


KILL_CODE = r"""
import sys, time
import numpy as np, fastsparse
from fastsparse import _checkpoint

def slow(f, **arrays):               # dies (kill -9) half way through writing
    f.write(b"PK\x03\x04 partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

_checkpoint.np.savez = slow
fastsparse.FactoredOutputLayer(300, 6, seed=0).save(sys.argv[1])
"""


def test_temporaries_of_killed_saves_are_removed(tmp_path):
    path = tmp_path / "layer.npz"
    layer = _trained()
    layer.save(path)
    before = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", KILL_CODE, str(path)],
                             cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.kill()                   # kill -9 mid-save
        child.wait()
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".layer.npz.")
    assert path.read_bytes() == before                       # intact
    host = _checkpoint._host_tag()
    keep = [f".layer.npz.{host}-{os.getppid()}-0123abcd.tmp",   # writer alive
            f".layer.npz.{'0' * 8 if host != '0' * 8 else '1' * 8}-{child.pid}-0123abcd.tmp",
            f".other.npz.{host}-{child.pid}-0123abcd.tmp",     # another target
            ".layer.npz.backup", "layer.npz.tmp"]
    for name in keep:
        (tmp_path / name).write_bytes(b"x")
    layer.save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["layer.npz"])
    assert _same_state(FactoredOutputLayer.load(path), layer)


def test_export_weights_round_trip_and_no_temporary(tmp_path):
    layer = _trained()
    layer.export_weights(tmp_path / "W.npy")
    W = np.load(tmp_path / "W.npy", mmap_mode="r")
    np.testing.assert_array_equal(W, layer.weights())
    assert os.listdir(tmp_path) == ["W.npy"]
    fastsparse.NaiveOutputLayer(1, 1).export_weights(tmp_path / "w1.npy")
    assert np.load(tmp_path / "w1.npy").shape == (1, 1)
