"""fastsparse.distributed: 2 processes on 127.0.0.1 (gloo), spawned here.

Each test launches tests/_dist_worker.py once per rank (bounded in time:
the processes are killed past the deadline) and compares what the ranks
recorded with a single process training the same model on the
concatenated minibatches, computed here.
"""
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import fastsparse  # noqa: E402
from fastsparse.torch import FactoredOutput, spherical_stats  # noqa: E402
from fastsparse.distributed import (DistributedFactoredOutput,  # noqa: E402
                                    _HEADER, fingerprint)

import _dist_worker as W  # noqa: E402
from _helpers import rel_err  # noqa: E402

WORKER = Path(__file__).resolve().parent / "_dist_worker.py"
WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario, tmp_path, deadline=240, kill_rank1_after_rank0=False):
    """Run ``scenario`` on 2 ranks; return ({rank: result}, {rank: output},
    {rank: returncode}).  Both processes are killed at ``deadline`` s."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo", PYTHONFAULTHANDLER="1")
    port = str(_free_port())
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), scenario, str(r), str(WORLD), port,
         str(tmp_path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    end = time.monotonic() + deadline
    outputs, codes = {}, {}
    try:
        for r, p in enumerate(procs):
            if r == 1 and kill_rank1_after_rank0:
                p.kill()
            try:
                outputs[r], _ = p.communicate(timeout=max(1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                pytest.fail(f"{scenario}: rank {r} still running after {deadline} s")
            codes[r] = p.returncode
    finally:
        for q in procs:
            if q.poll() is None:
                q.kill()
                q.wait()
    results = {}
    for r in range(WORLD):
        f = tmp_path / f"{scenario}-rank{r}.pkl"
        if f.exists():
            with open(f, "rb") as fh:
                results[r] = pickle.load(fh)
            assert "worker_error" not in results[r], (
                f"rank {r}:\n{results[r]['worker_error']}\n{outputs.get(r, '')[-3000:]}")
    return results, outputs, codes


# ------------------------------------------------------ single-process reference
def reference(cfg):
    """One process, the concatenated minibatches (W.WORLD * m examples):
    per-step per-example losses, lower-layer gradients, final W, b, body."""
    X, Y = W.make_data(cfg["steps"], WORLD)
    body = W.make_body(cfg["dtype"])
    layer = W.make_layer(cfg)
    opt = torch.optim.SGD(body.parameters(), lr=cfg["lr"])
    out = FactoredOutput(layer, cfg["lr"], reduction="none")
    M = X.shape[1]
    losses, grads = [], []
    for t in range(cfg["steps"]):
        opt.zero_grad()
        h = body(torch.from_numpy(X[t]))
        if cfg["loss"] == "custom":
            L = W.custom_loss(*spherical_stats(h, layer, Y[t][:, None], cfg["lr"]))
            L.mean().backward()
            L = L.detach().numpy()
        elif cfg["mode"] == "batch":
            L = out(h, torch.from_numpy(Y[t]))
            L.mean().backward()
            L = L.detach().numpy()
        else:
            L, G = layer.step(h.detach().numpy(), Y[t], cfg["lr"], mode="online")
            h.backward(torch.from_numpy(G) / M)
        losses.append(L)
        grads.append([p.grad.numpy().copy() for p in body.parameters()])
        opt.step()
    return (np.array(losses), grads, layer.weights(), layer.bias(),
            [p.detach().numpy().copy() for p in body.parameters()])


@pytest.fixture(scope="module")
def equiv(tmp_path_factory):
    res, out, codes = launch("equiv", tmp_path_factory.mktemp("equiv"))
    assert codes == {0: 0, 1: 0}, out
    return res


# The distributed runs and the reference do the same arithmetic in another
# order (the body's matmuls on m rows instead of 2m, DDP's mean of two
# gradients instead of one mean over 2m examples).  Measured over the 100
# steps (max relative error over the steps and configurations):
#   float64: losses 1.9e-15, lower-layer gradients 3.5e-14, final output
#            layer 1.1e-15, final lower layers 2.2e-15;
#   float32: losses 2.0e-6, gradients 3.1e-5, output layer 1.9e-6, lower
#            layers 2.4e-6 (the gradients, small late in training, are the
#            most sensitive, as in tests/test_torch.py).
# A real mistake is far above: lr off by 1%, a rank's examples dropped or
# applied twice, the mean over ranks forgotten give 1e-3 to 1.
TOL = {"float64": (1e-12, 1e-12), "float32": (2e-5, 2e-4)}     # (values, gradients)


@pytest.mark.slow    # 2 processes on loopback
@pytest.mark.parametrize("i", range(len(W.EQUIV)),
                         ids=[f"{c['loss']}-{c['mode']}-{c['dtype']}"
                              f"{'-whole_model_in_ddp' if c['whole'] else ''}"
                              for c in W.EQUIV])
def test_equals_one_process_on_concatenated_minibatches(equiv, i):
    """Losses, lower-layer gradients (after DDP's averaging), the final
    output layer and lower layers equal one process training on the
    concatenated minibatches (reduction="mean"): batch mode = one minibatch
    update of the global minibatch, online mode = layer.step(mode="online")
    on the concatenation in rank order; "custom": a loss written in torch
    on out.spherical_stats() = fastsparse.torch.spherical_stats."""
    cfg = W.EQUIV[i]
    L, G, Wref, bref, body = reference(cfg)
    tol, gtol = TOL[cfg["dtype"]]
    r0, r1 = equiv[0][i], equiv[1][i]
    assert L[-1].mean() < 0.9 * L[0].mean()               # it learned something
    for r, rec in ((0, r0), (1, r1)):
        own = L[:, r * W.m:(r + 1) * W.m].mean(1)
        assert rel_err(rec["losses"], own) < tol
        for gs, rs in zip(rec["grads"], G):
            for g, ref in zip(gs, rs):
                assert rel_err(g, ref) < gtol
        assert rel_err(rec["W"], Wref) < tol
        if bref is not None:
            assert rel_err(rec["b"], bref) < tol
        for p, ref in zip(rec["body"], body):
            assert rel_err(p, ref) < tol


@pytest.mark.slow    # 2 processes on loopback
@pytest.mark.parametrize("i", range(len(W.EQUIV)))
def test_replicas_bitwise_identical_after_100_steps(equiv, i):
    r0, r1 = equiv[0][i], equiv[1][i]
    assert r0["steps"] == r1["steps"] == 100
    assert r0["fingerprint"] == r1["fingerprint"] == r0["checked"]
    assert r0["W"].tobytes() == r1["W"].tobytes()
    if r0["b"] is not None:
        assert r0["b"].tobytes() == r1["b"].tobytes()


@pytest.mark.slow    # 2 processes on loopback
@pytest.mark.parametrize("i", range(len(W.EQUIV)))
def test_exchange_is_the_minibatch_only(equiv, i):
    """Per step, a rank sends its header and its m rows (h, indices and
    dL/da, dL/dq(, dL/ds) in batch mode; h, indices and values online):
    nothing of the D x d state, which DDP does not see either (no parameter,
    no buffer of the layer in DDP, even wrapping the whole model)."""
    cfg, rec = W.EQUIV[i], equiv[0][i]
    isz = np.dtype(cfg["dtype"]).itemsize
    K = 1
    if cfg["mode"] == "batch":       # + dL/ds when the layer tracks s
        row = W.d * isz + 8 * K + isz * K + isz + isz * (cfg["loss"] == "custom")
    else:
        row = W.d * isz + 8 * K + 8 * K
    assert set(rec["bytes_sent"]) == {_HEADER.size + W.m * row}
    assert rec["ddp_params"] == rec["body_params"]
    assert rec["ddp_buffers"] == 0


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    res, out, codes = launch("faults", tmp_path_factory.mktemp("faults"))
    assert codes == {0: 0, 1: 0}, out
    return res


@pytest.mark.slow    # 2 processes on loopback
@pytest.mark.parametrize("mode", ["batch", "online"])
@pytest.mark.parametrize("case,own_error", [
    ("index", "IndexError"), ("shape", "ValueError"), ("nan", "ValueError"),
    ("dtype", "TypeError")])
def test_bad_input_on_one_rank_is_refused_on_every_rank(faults, mode, case,
                                                        own_error):
    """Rank 1's input is invalid: it raises its own error, rank 0 raises
    PeerInputError naming rank 1, and neither replica changed."""
    r0, r1 = faults[0][mode, case], faults[1][mode, case]
    assert r1["error"][0] == own_error
    assert r0["error"][0] == "PeerInputError"
    assert "rank(s) [1]" in r0["error"][1] and "no replica changed" in r0["error"][1]
    for r in (r0, r1):
        assert r["before"] == r["after"] and not r["steps_changed"]
    assert r0["before"] == r1["before"]


@pytest.mark.slow    # 2 processes on loopback
@pytest.mark.parametrize("mode", ["batch", "online"])
@pytest.mark.parametrize("case", ["K", "lr"])
def test_disagreeing_calls_are_refused(faults, mode, case):
    """Different numbers of targets per example, or different lr: every
    rank raises PeerInputError, nothing changes, and training goes on."""
    for r in (0, 1):
        rec = faults[r][mode, case]
        assert rec["error"][0] == "PeerInputError"
        assert ("K = 2" if case == "K" else "lr: rank 0") in rec["error"][1]
        assert rec["before"] == rec["after"] and not rec["steps_changed"]
    assert faults[0][mode, "after"] == faults[1][mode, "after"]


@pytest.mark.slow    # 2 processes on loopback
def test_divergence_is_detected(faults):
    """Rank 1 trains its replica outside the module: the on-demand check and
    the scheduled one (every 4 steps) raise on both ranks, naming rank 1."""
    for r in (0, 1):
        kind, msg, ranks = faults[r]["diverged_on_demand"]
        assert kind == "ReplicaDivergenceError" and ranks == [1]
        assert "ranks [1] differ from rank 0" in msg
        kind, msg, ranks, step = faults[r]["diverged_scheduled"]
        assert kind == "ReplicaDivergenceError" and ranks == [1] and step == 4
        assert "scheduled check at step 4" in msg


@pytest.mark.slow    # 2 processes on loopback
def test_checkpoint_restart_continues_bit_for_bit(faults):
    """Rank 0 writes the layer's checkpoint at step 10 (the body with
    torch.save); every rank loads it and the restarted run ends bit for bit
    where the uninterrupted one does."""
    for r in (0, 1):
        full, again = faults[r]["restart"]["full"], faults[r]["restart"]["again"]
        assert again["W"].tobytes() == full["W"].tobytes()
        assert again["b"].tobytes() == full["b"].tobytes()
        assert again["fingerprint"] == full["fingerprint"]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(again["body"], full["body"]))
        assert again["losses"] == full["losses"][10:]
    assert faults[0]["restart"]["full"]["fingerprint"] == \
        faults[1]["restart"]["full"]["fingerprint"]


@pytest.mark.slow    # 2 processes on loopback
def test_unreadable_checkpoint_fails_on_every_rank(faults):
    assert faults[1]["bad_load"][0] == "FileNotFoundError"
    assert faults[0]["bad_load"][0] == "PeerInputError"
    assert "rank(s) [1]" in faults[0]["bad_load"][1]


@pytest.mark.slow    # 2 processes on loopback
@pytest.mark.parametrize("how", ["kill", "raise"])
def test_dead_or_stuck_rank_fails_the_other_within_the_timeout(tmp_path, how):
    """Rank 1 is killed (SIGKILL) or raises and stays alive, before its 4th
    training call: rank 0 raises DistributedError, at once (connection
    closed) or after the 5 s timeout, with a message that says what to do."""
    res, out, codes = launch(f"kill-{how}", tmp_path, deadline=90,
                             kill_rank1_after_rank0=True)
    assert codes[0] == 0, out[0]
    r0 = res[0]
    assert r0["error"] is not None and r0["step"] == 3 and r0["layer_steps"] == 3
    assert "failed on rank 0 of 2" in r0["error"]
    assert "restart every rank from the last checkpoint" in r0["error"]
    assert r0["elapsed"] < W.TIMEOUT + 5
    if how == "kill":
        assert codes[1] == -signal.SIGKILL


# ------------------------------------------------ one rank, in this process
def test_needs_an_initialised_process_group():
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    layer = fastsparse.FactoredOutputLayer(50, 4, seed=0)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedFactoredOutput(layer, 0.1)


@pytest.fixture(scope="module")
def one_rank():
    """A gloo group of one process (this one), for the API's local checks."""
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                            rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_equals_factored_output(one_rank, rng):
    """With one rank, batch mode is FactoredOutput bit for bit (lr / 1), and
    online mode is layer.step(mode="online")."""
    kw = dict(dtype=np.float32, seed=3, loss="spherical_softmax", bias=True)
    a, b, c = (fastsparse.FactoredOutputLayer(60, 6, **kw) for _ in range(3))
    out_a = DistributedFactoredOutput(a, 0.1, reduction="mean")
    out_b = FactoredOutput(b, 0.1, reduction="mean")
    out_c = DistributedFactoredOutput(c, 0.1, mode="online")
    for t in range(4):
        H = np.tanh(rng.standard_normal((5, 6))).astype(np.float32)
        y = rng.integers(0, 60, 5)
        ha, hb, hc = (torch.tensor(H, requires_grad=True) for _ in range(3))
        La, Lb = out_a(ha, y), out_b(hb, y)
        La.backward()
        Lb.backward()
        assert La.item() == Lb.item() and torch.equal(ha.grad, hb.grad)
        Lc = out_c(hc, y)
        Lc.backward()
        if t == 0:
            ref = fastsparse.FactoredOutputLayer(60, 6, **kw)
        L_on, G_on = ref.step(H, y, 0.1, mode="online")
        assert Lc.item() == torch.from_numpy(L_on).sum().item()
        assert np.array_equal(hc.grad.numpy(), G_on)
    assert a.weights().tobytes() == b.weights().tobytes()
    assert c.weights().tobytes() == ref.weights().tobytes()
    assert out_a.steps == out_c.steps == 4


def test_eval_and_no_grad_are_local(one_rank, rng):
    layer = fastsparse.FactoredOutputLayer(60, 6, seed=3, dtype=np.float64)
    out = DistributedFactoredOutput(layer, 0.1)
    n, fp = out.stats["exchanges"], fingerprint(layer)
    h, y = torch.tensor(rng.standard_normal((5, 6))), rng.integers(0, 60, 5)
    with torch.no_grad():
        out(h, y)
    out.eval()
    out(h.requires_grad_(), y).backward()
    a, q, s = out.spherical_stats(h, y[:, None])
    assert out.stats["exchanges"] == n and fingerprint(layer) == fp
    assert out.steps == 0


def test_argument_errors(one_rank):
    layer = fastsparse.FactoredOutputLayer(50, 4, seed=0)
    for kw, exc in [({"mode": "minibatch"}, ValueError), ({"average": 1}, TypeError),
                    ({"check_every": -1}, ValueError), ({"timeout": 0}, ValueError),
                    ({"reduction": "max"}, ValueError), ({"weight_decay": -1}, ValueError)]:
        with pytest.raises(exc):
            DistributedFactoredOutput(layer, 0.1, **kw)
    cb = fastsparse.FactoredOutputLayer(50, 4, seed=0, loss=lambda a, q, s, v: (
        q, np.zeros_like(a), np.ones_like(q), np.zeros_like(q)))
    with pytest.raises(ValueError, match="online"):
        DistributedFactoredOutput(cb, 0.1, mode="online")
    out = DistributedFactoredOutput(layer, 0.1, mode="online")
    with pytest.raises(ValueError, match="mode='batch'"):
        out.spherical_stats(torch.zeros(2, 4), np.zeros((2, 1), np.int64))
    with pytest.raises(ValueError, match="src"):
        out.save("x.npz", src=1)
    # a refused call on the only rank: its own error, nothing exchanged after
    with pytest.raises(IndexError):
        out(torch.zeros(2, 4), torch.tensor([0, 50]))
    assert out.steps == 0


# ------------------------------------------------------------ the example
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distributed_lm.py"
TINY = ["--max-files", "30", "--max-vocab", "500", "--embed", "8", "--hidden", "16",
        "--batch-size", "16", "--eval-every", "10", "--eval-examples", "300",
        "--timeout", "60", "--check-every", "5", "--quiet"]


def torchrun(args, cwd, deadline=180):
    """examples/distributed_lm.py under torchrun, 2 processes on 127.0.0.1."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(EXAMPLE)] + TINY + args
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=deadline)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
@pytest.mark.skipif(not EXAMPLE.exists(), reason="not running from a source checkout")
def test_example_runs_and_restarts_bit_for_bit(tmp_path):
    """torchrun --nproc-per-node 2 examples/distributed_lm.py at a tiny size:
    it trains (held-out loss below its start), the replicas agree, each rank
    sends its minibatch only, and a run resumed from its checkpoint of step
    15 ends with the fingerprint of the uninterrupted run."""
    import json
    torchrun(["--steps", "30", "--json", "full.json", "--checkpoint", "ck",
              "--save-every", "15"], tmp_path)
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["evals"][-1][1] < full["evals"][0][1]
    assert all(np.isfinite(full["train_losses"]))
    row = 16 * 4 + 8 + 4 + 4                # h, index, dL/da, dL/dq (float32)
    assert full["bytes_sent_per_step"] == _HEADER.size + 16 * row
    assert (tmp_path / "ck" / "step-15" / "layer.npz").exists()
    torchrun(["--steps", "30", "--resume", "ck/step-15", "--json", "resumed.json"],
             tmp_path)
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["start_step"] == 15
    assert resumed["fingerprint"] == full["fingerprint"]
    assert resumed["train_losses"] == full["train_losses"][15:]
