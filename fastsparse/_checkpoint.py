"""Checkpoints: exact, atomic save and validated load of a layer's state.

Format: a NumPy ``.npz`` archive (no pickle) holding the state arrays and a
JSON metadata record (format version, class, dtype, sizes, loss and its
parameters, bias and sum tracking, the numerical-health control's knobs,
counters and estimates) with a SHA-256 digest of every array.  Saving
writes a temporary file in the same directory, flushes it to disk and
renames it over the target (``os.replace``, atomic), so that a crash
mid-save leaves the previous checkpoint intact.  Loading checks the format,
the digests (corruption), shapes, dtypes, finiteness and the consistency of
the factored state (``U Uinv = I`` within tolerance) before building the
layer; a truncated or corrupted file is refused with a ``ValueError``.
"""
import hashlib
import json
import os
import uuid
import zipfile

import numpy as np

from . import losses as _losses

FORMAT = "fastsparse-checkpoint"
VERSION = 1


def _digest(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8)).hexdigest()


def loss_to_dict(loss):
    if isinstance(loss, _losses.CallableLoss):
        return {"name": "callable"}
    out = {"name": loss.name}
    for key in ("eps", "alpha", "beta"):
        if hasattr(loss, key):
            out[key] = getattr(loss, key)
    return out


def loss_from_dict(spec, loss):
    if spec["name"] == "callable":
        if loss is None:
            raise ValueError("the checkpoint's layer used a callable loss, which "
                             "is not saved: pass it again with load(path, loss=...)")
        return _losses.get_loss(loss)
    if loss is not None:
        raise ValueError("loss= is only for checkpoints of layers with a callable loss")
    params = {k: v for k, v in spec.items() if k != "name"}
    return type(_losses.get_loss(spec["name"]))(**params)


def save(layer, path, meta, arrays):
    """Write ``arrays`` (name -> ndarray) and ``meta`` to ``path`` atomically."""
    path = os.fspath(path)
    meta = dict(meta, format=FORMAT, version=VERSION, cls=type(layer).__name__,
                digests={k: _digest(v) for k, v in arrays.items()})
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=blob, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(cls, path):
    """Read and check a checkpoint; returns (meta, arrays)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError,
            UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable fastsparse checkpoint "
                         f"(corrupted or truncated?): {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastsparse checkpoint")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint format version {meta.get('version')}, "
                         f"this fastsparse reads version {VERSION}")
    if meta.get("cls") != cls.__name__:
        raise ValueError(f"{path}: a {meta.get('cls')} checkpoint, not a {cls.__name__}")
    digests = meta.get("digests", {})
    if set(digests) != set(arrays):
        raise ValueError(f"{path}: the checkpoint's arrays do not match its record")
    for name, arr in arrays.items():
        if _digest(arr) != digests[name]:
            raise ValueError(f"{path}: array {name!r} is corrupted (digest mismatch)")
    dtype = np.dtype(meta["dtype"])
    for name, arr in arrays.items():
        if arr.dtype != dtype:
            raise ValueError(f"{path}: array {name!r} has dtype {arr.dtype}, "
                             f"expected {dtype}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: array {name!r} holds non-finite values")
    return meta, arrays


def check_shapes(path, arrays, shapes):
    for name, shape in shapes.items():
        if name not in arrays:
            raise ValueError(f"{path}: the checkpoint lacks array {name!r}")
        if arrays[name].shape != shape:
            raise ValueError(f"{path}: array {name!r} has shape {arrays[name].shape}, "
                             f"expected {shape}")
