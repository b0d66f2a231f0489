"""Checkpoints (exact, atomic, validated), memmap-backed V, top-k scoring and
chunked weight export."""
import os

import numpy as np
import pytest

from fastsparse import FactoredOutputLayer, NaiveOutputLayer, _checkpoint
from fastsparse.losses import SphericalSoftmax
from _helpers import rel_err

LAYERS = [FactoredOutputLayer, NaiveOutputLayer]


def _trained(cls, loss="squared", bias=True, seed=0):
    rng = np.random.default_rng(seed)
    layer = cls.from_weights(rng.standard_normal((300, 6)) / 3, bias=bias, loss=loss,
                             dtype=np.float32)
    for _ in range(20):
        layer.step(np.tanh(rng.standard_normal((4, 6)) + 0.3), rng.integers(0, 300, 4),
                   0.05, mode="online")
    return layer


def _state(layer):
    return {k: v.tobytes() for k, v in vars(layer).items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("loss", ["squared", SphericalSoftmax(eps=0.2), "z_loss"])
def test_save_load_is_exact_and_training_continues_identically(cls, loss, tmp_path):
    layer = _trained(cls, loss)
    path = tmp_path / "layer.npz"
    layer.save(path)
    loaded = cls.load(path)
    assert _state(loaded) == _state(layer)
    assert loaded.loss.name == layer.loss.name and loaded.has_bias
    if cls is FactoredOutputLayer:
        assert loaded.health()["n_checks"] == layer.health()["n_checks"]
        assert loaded._health.state()["knobs"] == layer._health.state()["knobs"]
    rng = np.random.default_rng(9)
    for _ in range(30):   # the same future, bit for bit (checks included)
        H, t = np.tanh(rng.standard_normal((4, 6))), rng.integers(0, 300, 4)
        np.testing.assert_array_equal(layer.step(H, t, 0.05, mode="online")[0],
                                      loaded.step(H, t, 0.05, mode="online")[0])
    np.testing.assert_array_equal(layer.weights(), loaded.weights())


def test_callable_loss_must_be_given_back(tmp_path):
    f = lambda a, q, s, v: (q, 0 * a, np.ones_like(q), 0 * q)  # noqa: E731
    layer = FactoredOutputLayer(50, 3, loss=f)
    layer.save(tmp_path / "c.npz")
    with pytest.raises(ValueError, match="pass it again with load"):
        FactoredOutputLayer.load(tmp_path / "c.npz")
    assert FactoredOutputLayer.load(tmp_path / "c.npz", loss=f).loss.func is f


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "layer.npz"
    layer = _trained(FactoredOutputLayer)
    layer.save(path)
    before = path.read_bytes()
    layer.step(np.ones((1, 6), dtype=np.float32), np.array([1]), 0.05)

    def crash(f, **arrays):          # dies half way through writing
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_checkpoint.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        layer.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["layer.npz"]   # no temporary left
    monkeypatch.undo()
    FactoredOutputLayer.load(path)


@pytest.mark.parametrize("cls", LAYERS)
def test_truncated_or_corrupted_file_is_refused(cls, tmp_path):
    path = tmp_path / "layer.npz"
    _trained(cls).save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        cls.load(tmp_path / "trunc.npz")
    # flip one byte inside the first array's data: the digest catches it
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = [i for i in z.infolist() if not i.filename.startswith("__meta__")][0]
    bad = bytearray(data)
    bad[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="corrupted|truncated"):
        cls.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        cls.load(tmp_path / "junk.npz")


def test_wrong_class_and_inconsistent_state_are_refused(tmp_path):
    path = tmp_path / "layer.npz"
    layer = _trained(FactoredOutputLayer)
    layer.save(path)
    with pytest.raises(ValueError, match="a FactoredOutputLayer checkpoint, not a NaiveOutputLayer"):
        NaiveOutputLayer.load(path)
    layer._st.Uinv *= 2             # U Uinv != I, saved with valid digests
    layer.save(path)
    with pytest.raises(ValueError, match="inconsistent state"):
        FactoredOutputLayer.load(path)


# ---- memmap-backed V -------------------------------------------------------
def test_memmap_V_trains_in_place(tmp_path):
    rng = np.random.default_rng(1)
    W0 = (rng.standard_normal((2000, 8)) / 3).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "V.npy", mode="w+", dtype=np.float32,
                                   shape=W0.shape)
    mm[:] = W0
    mm.flush()
    layer = FactoredOutputLayer.from_weights(mm, copy=False,
                                             stability={"enabled": False})
    ref = FactoredOutputLayer.from_weights(W0, stability={"enabled": False})
    assert layer._st.V is mm
    touched = set()
    for _ in range(20):
        H = 0.3 * rng.standard_normal((4, 8)).astype(np.float32)
        t = rng.integers(0, 2000, 4)
        touched.update(t.tolist())
        np.testing.assert_array_equal(layer.step(H, t, 0.05, mode="online")[0],
                                      ref.step(H, t, 0.05, mode="online")[0])
    np.testing.assert_array_equal(layer.weights(), ref.weights())
    mm.flush()
    on_disk = np.load(tmp_path / "V.npy", mmap_mode="r")
    untouched = np.setdiff1d(np.arange(2000), sorted(touched))
    np.testing.assert_array_equal(on_disk[untouched], W0[untouched])   # only target rows
    assert not np.array_equal(on_disk[sorted(touched)], W0[sorted(touched)])


def test_copy_false_validation():
    W = np.ones((10, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="copy=False needs W to be a NumPy array of dtype float64"):
        FactoredOutputLayer.from_weights(W, dtype=np.float64, copy=False)
    with pytest.raises(ValueError, match="C-contiguous and writable"):
        FactoredOutputLayer.from_weights(np.asfortranarray(W), copy=False)
    with pytest.raises(ValueError, match="cannot be combined with a bias"):
        FactoredOutputLayer.from_weights(W, copy=False, bias=True)
    assert NaiveOutputLayer.from_weights(W, copy=False)._W is W


# ---- scoring and export ----------------------------------------------------
@pytest.mark.parametrize("cls", LAYERS)
def test_topk_matches_dense_sort(cls, monkeypatch):
    import fastsparse._base as base
    monkeypatch.setattr(base, "_CHUNK_ROWS", 64)        # several chunks
    layer = _trained(cls)
    H = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    O = layer.outputs(H)
    for k in (1, 7, 300):
        idx, scores = layer.topk(H, k)
        assert idx.shape == scores.shape == (5, k)
        ref = np.argsort(-O, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_allclose(scores, np.take_along_axis(O, ref, 1), rtol=1e-6)
    with pytest.raises(ValueError, match="k must be <= n_outputs"):
        layer.topk(H, 301)


@pytest.mark.parametrize("cls", LAYERS)
def test_export_weights_in_chunks(cls, tmp_path, monkeypatch):
    import fastsparse._base as base
    monkeypatch.setattr(base, "_CHUNK_ROWS", 64)
    layer = _trained(cls)
    layer.export_weights(tmp_path / "W.npy")
    W = np.load(tmp_path / "W.npy", mmap_mode="r")
    assert rel_err(W, layer.weights()) < 1e-6
    assert W.shape == (300, 6) and W.dtype == np.float32
