"""Checkpoints: exact, atomic save and validated load of a layer's state.

Format: a NumPy ``.npz`` archive (uncompressed, no pickle) holding the state
arrays and a JSON metadata record (format version, class, dtype, sizes,
loss and its parameters, bias and sum tracking, the layer's settings, the
numerical-health control's knobs, counters and estimates) with a SHA-256
digest of every array.

Writing (:func:`save`, and :func:`atomic_write` for ``export_weights``):
the file is written with ordinary writes to a temporary file in the same
directory, flushed to disk (fsync), renamed over the target (``os.replace``,
atomic) and the directory is fsynced, so that a crash, a kill or a full
disk at any point leaves the previous file intact; on an error the
temporary file is removed.  The new file keeps the mode of the file it
replaces (a new file gets the umask's).  Temporary files are named
``.<name>.<host>-<pid>-<random>.tmp``: a later write of the same target
removes those of writers on this host whose process is gone (killed
mid-write).

Reading (:func:`load`) trusts nothing in the file: it refuses non-regular
files before opening them for reading, checks the zip directory (only
stored members, all within the file), the metadata (types and ranges of
every entry), then every member's ``.npy`` header (dtype, byte order,
shape, size) against the metadata *before* allocating any array, reads
each array in chunks, and checks the zip CRC, the digests and finiteness;
the layer then checks the consistency of its state.  Any problem with the
file raises :class:`fastsparse.CheckpointError` (a ValueError); a missing
or unreadable path raises the usual OSError (FileNotFoundError,
PermissionError).
"""
import errno
import hashlib
import json
import os
import re
import socket
import stat
import zipfile

import numpy as np

from . import losses as _losses
from ._errors import CheckpointError
from ._validation import check_bool, check_dtype, check_size

FORMAT = "fastsparse-checkpoint"
VERSION = 1

_META = "__meta__"
#: largest metadata record read (bytes): the record is a few KiB
MAX_META_BYTES = 64 << 20
#: largest .npy header read (bytes); numpy writes 128 for these arrays
_MAX_NPY_HEADER = 4096
#: bytes read at once when loading an array
_READ_CHUNK = 1 << 24


def _digest(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8)).hexdigest()


# ------------------------------------------------------------------ losses
def loss_to_dict(loss):
    if isinstance(loss, _losses.CallableLoss):
        return {"name": "callable"}
    out = {"name": loss.name}
    for key in ("eps", "alpha", "beta"):
        if hasattr(loss, key):
            out[key] = getattr(loss, key)
    return out


def loss_from_dict(path, spec, loss):
    """The loss a checkpoint's record describes (``loss``: the callable the
    caller passes back for a layer saved with a callable loss)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise CheckpointError(f"{path}: invalid metadata 'loss': {spec!r}")
    name = spec["name"]
    if name == "callable":
        if loss is None:
            raise ValueError("the checkpoint's layer used a callable loss, which "
                             "is not saved: pass it again with load(path, loss=...)")
        if not callable(loss):
            raise TypeError(f"loss must be the callable the layer was saved "
                            f"with, got {type(loss).__name__}")
        return _losses.get_loss(loss)
    if loss is not None:
        raise ValueError("loss= is only for checkpoints of layers with a callable loss")
    cls = _losses._BY_NAME.get(name)
    if cls is None:
        raise CheckpointError(f"{path}: unknown loss {name!r} in the metadata")
    try:
        return cls(**{k: v for k, v in spec.items() if k != "name"})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid parameters of the {name!r} "
                              f"loss in the metadata: {exc}") from None


# ----------------------------------------------------------------- writing
def _host_tag():
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


_TMP_RE = re.compile(r"([0-9a-f]{8})-([0-9]{1,10})-[0-9a-f]{8}")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:         # e.g. PermissionError: it exists
        return True
    return True


def _remove_stale_temporaries(directory, base):
    """Remove the temporary files of earlier writes of ``base`` made on this
    host by processes that no longer exist (killed mid-write)."""
    prefix, host, me = f".{base}.", _host_tag(), os.getpid()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        m = _TMP_RE.fullmatch(name[len(prefix):-4])
        if m is None or m.group(1) != host:
            continue
        pid = int(m.group(2))
        if pid == me or pid == 0 or _pid_alive(pid):
            continue
        full = os.path.join(directory, name)
        try:
            if stat.S_ISREG(os.lstat(full).st_mode):
                os.remove(full)
        except OSError:
            pass


def _target_path(path):
    """The file a write to ``path`` replaces (a symbolic link: its target),
    refusing paths that cannot name a regular file."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or path == "":
        raise ValueError("path must be a non-empty file name, got an empty path")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(errno.EISDIR, "path names a directory", path)
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "path names a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file; refusing to replace it")
    return target, st


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return                      # e.g. not possible on this platform
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Write a file atomically: ``write(f)`` fills a temporary file ``f``
    (binary, in the target's directory), which is then fsynced and renamed
    over ``path``, and the directory fsynced.  On any error (full disk,
    interrupt) the temporary file is removed and ``path`` is untouched."""
    target, st = _target_path(path)
    directory, base = os.path.split(target)
    _remove_stale_temporaries(directory, base)
    tmp = os.path.join(directory, f".{base}.{_host_tag()}-{os.getpid()}-"
                                  f"{os.urandom(4).hex()}.tmp")
    # created with mode 0666 & ~umask, as open() would create a new file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                 | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            if st is not None and hasattr(os, "fchmod"):  # keep owner and mode
                if hasattr(os, "fchown") and \
                        (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    try:
                        os.fchown(fd, st.st_uid, st.st_gid)
                    except OSError:
                        pass
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def save(layer, path, meta, arrays):
    """Write ``arrays`` (name -> ndarray) and ``meta`` to ``path`` atomically."""
    meta = dict(meta, format=FORMAT, version=VERSION, cls=type(layer).__name__,
                digests={k: _digest(v) for k, v in arrays.items()})
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **{_META: blob}, **arrays))


def write_npy(path, dtype, shape, chunks):
    """Write a ``.npy`` file atomically from an iterable of C-ordered chunks
    of rows (ordinary writes: a full disk raises OSError, leaves no file)."""
    dtype = np.dtype(dtype)

    def write(f):
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False, "shape": tuple(shape)})
        for chunk in chunks:
            f.write(memoryview(np.ascontiguousarray(chunk, dtype=dtype)).cast("B"))
    atomic_write(path, write)


# ----------------------------------------------------------------- reading
def _bad(path, message):
    return CheckpointError(f"{path}: {message}")


def load(cls, path):
    """Read and check a checkpoint of ``cls``; returns (meta, arrays).

    ``cls._checkpoint_shapes(n_outputs, n_hidden, has_bias, track_sum)``
    gives the arrays the file must hold.  Every problem with the file
    raises CheckpointError; the layer checks the consistency of the state.
    """
    path = os.fspath(path)
    st = os.stat(path)           # FileNotFoundError, PermissionError: as is
    if not stat.S_ISREG(st.st_mode):
        raise _bad(path, "not a regular file (a fastsparse checkpoint is a "
                         ".npz file)")
    # O_NONBLOCK: a FIFO swapped in since the stat cannot block the open
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _bad(path, "not a regular file")
        try:
            return _read(cls, f, st.st_size, path)
        except (CheckpointError, MemoryError):
            raise
        except Exception as exc:     # anything zipfile/numpy/json raise on bad bytes
            raise _bad(path, f"not a readable fastsparse checkpoint (corrupted "
                             f"or truncated?): {type(exc).__name__}: {exc}") from exc


def _read(cls, f, size, path):
    with zipfile.ZipFile(f) as z:
        return _read_archive(cls, z, size, path)


def _read_archive(cls, z, size, path):
    infos = {}
    for info in z.infolist():
        if info.filename in infos:
            raise _bad(path, f"duplicate member {info.filename!r}")
        if info.flag_bits & 0x1:
            raise _bad(path, f"member {info.filename!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _bad(path, f"member {info.filename!r} is compressed (method "
                             f"{info.compress_type}); fastsparse writes stored members")
        if info.file_size != info.compress_size or info.header_offset < 0 or \
                info.header_offset + info.compress_size > size:
            raise _bad(path, f"member {info.filename!r} has inconsistent sizes")
        infos[info.filename] = info
    if _META + ".npy" not in infos:
        raise _bad(path, "not a fastsparse checkpoint (no metadata record)")
    meta_info = infos.pop(_META + ".npy")
    if meta_info.file_size > MAX_META_BYTES:
        raise _bad(path, f"metadata record of {meta_info.file_size} bytes")
    raw = _read_member(z, meta_info, np.dtype(np.uint8), None, path)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(path, f"unreadable metadata record: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(path, "not a fastsparse checkpoint")
    if meta.get("version") != VERSION:
        raise _bad(path, f"checkpoint format version {meta.get('version')!r}, "
                         f"this fastsparse reads version {VERSION}")
    if meta.get("cls") != cls.__name__:
        raise _bad(path, f"a {meta.get('cls')} checkpoint, not a {cls.__name__}")
    dtype = _entry(path, meta, "dtype", check_dtype)
    meta["dtype"] = dtype.name
    for key in ("n_outputs", "n_hidden"):
        meta[key] = _entry(path, meta, key, lambda v, key=key: check_size(v, key))
    for key in ("has_bias", "track_sum"):
        meta[key] = _entry(path, meta, key, lambda v, key=key: check_bool(v, key))
    shapes = cls._checkpoint_shapes(meta["n_outputs"], meta["n_hidden"],
                                    meta["has_bias"], meta["track_sum"])
    digests = meta.get("digests")
    if not isinstance(digests, dict) or set(digests) != set(shapes) or not all(
            isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
            for v in digests.values()):
        raise _bad(path, f"the metadata's digests do not list the arrays "
                         f"{sorted(shapes)}")
    names = {name[:-4] for name in infos if name.endswith(".npy")}
    if names != set(shapes) or len(infos) != len(shapes):
        missing = sorted(set(shapes) - names)
        extra = sorted(set(infos) - {n + ".npy" for n in shapes})
        raise _bad(path, f"the archive's arrays do not match its metadata "
                         f"(missing {missing}, unexpected {extra})")
    # sizes from the zip directory alone, before reading any array
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        extra = infos[name + ".npy"].file_size - nbytes
        if not 10 <= extra <= 12 + _MAX_NPY_HEADER:
            raise _bad(path, f"member {name!r} has {infos[name + '.npy'].file_size} "
                             f"bytes, not those of a {dtype.name} array of shape {shape}")
    arrays = {}
    for name, shape in shapes.items():
        arr = _read_member(z, infos[name + ".npy"], dtype, shape, path, name)
        if _digest(arr) != digests[name]:
            raise _bad(path, f"array {name!r} is corrupted (digest mismatch)")
        if not np.isfinite(arr).all():
            raise _bad(path, f"array {name!r} holds non-finite values")
        arrays[name] = arr
    return meta, arrays


def _entry(path, meta, key, check):
    if key not in meta:
        raise _bad(path, f"the metadata lacks {key!r}")
    try:
        return check(meta[key])
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"invalid metadata {key!r}: {exc}") from None


def _read_member(z, info, dtype, shape, path, name=_META):
    """One .npy member: its header checked against ``dtype`` and ``shape``
    (None: any 1-D shape) and the member's size before the array is
    allocated; then read in chunks, to the end (which checks the CRC)."""
    with z.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            hdr = np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            hdr = np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_NPY_HEADER)
        else:
            raise _bad(path, f"array {name!r}: unsupported .npy version {version}")
        got_shape, fortran, got_dtype = hdr
        if got_dtype != dtype or got_dtype.byteorder == ">":
            raise _bad(path, f"array {name!r} has dtype {got_dtype.str}, "
                             f"expected {dtype.str}")
        if shape is None:
            shape = got_shape if len(got_shape) == 1 else None
        if got_shape != shape or fortran:
            raise _bad(path, f"array {name!r} has shape {got_shape}"
                             f"{' (Fortran order)' if fortran else ''}, expected "
                             f"{shape if shape is not None else 'a 1-D array'}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if fp.tell() + nbytes != info.file_size:
            raise _bad(path, f"array {name!r}: member size {info.file_size} does "
                             f"not match its header")
        arr = np.empty(shape, dtype=dtype)
        buf = arr.reshape(-1).view(np.uint8)
        pos = 0
        while pos < nbytes:
            chunk = fp.read(min(_READ_CHUNK, nbytes - pos))
            if not chunk:
                raise _bad(path, f"array {name!r} is truncated")
            buf[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            pos += len(chunk)
        if fp.read(1):
            raise _bad(path, f"array {name!r}: trailing bytes")
    return arr
