"""One rank of the 2-process tests of fastsparse.distributed.

Run by tests/test_distributed.py as
``python _dist_worker.py SCENARIO RANK WORLD PORT OUTDIR`` (one process per
rank, gloo over 127.0.0.1).  Each scenario writes what the test compares
to OUTDIR/<scenario>-rank<R>.pkl; the single-process references are
computed by the test itself.
"""
import datetime
import os
import pickle
import signal
import sys
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist

import fastsparse
from fastsparse.losses import SphericalSoftmax, SquaredError
from fastsparse.distributed import (DistributedError, DistributedFactoredOutput,
                                    PeerInputError, ReplicaDivergenceError,
                                    fingerprint)

TORCH = {"float32": torch.float32, "float64": torch.float64}

# The model of the equivalence runs (the test builds the same one).
D, E, d, m = 300, 8, 12, 8        # vocabulary = outputs, embedding, hidden, per rank


def make_data(steps, world, seed=0):
    """(X, Y) of shape (steps, world * m): global minibatches; rank r takes
    columns r*m:(r+1)*m."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(D)
    X = rng.integers(0, D, (steps, world * m))
    Y = np.where(rng.random(X.shape) < 0.8, perm[X], rng.integers(0, D, X.shape))
    return X, Y


def make_body(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(D, E), torch.nn.Linear(E, d),
                               torch.nn.Tanh()).to(TORCH[dtype])


# eps = 0.1: with a small eps the spherical softmax's -log(a^2 + eps) is
# concave near a = 0 and training amplifies rounding (tests/test_torch.py)
LOSSES = {"squared": SquaredError(), "spherical_softmax": SphericalSoftmax(eps=0.1)}


def make_layer(cfg):
    if cfg["loss"] == "custom":      # a loss written in torch on (a, q, s)
        return fastsparse.FactoredOutputLayer(
            D, d, dtype=np.dtype(cfg["dtype"]), seed=1, bias=cfg["bias"],
            track_sum=True)
    return fastsparse.FactoredOutputLayer(
        D, d, dtype=np.dtype(cfg["dtype"]), seed=1, loss=LOSSES[cfg["loss"]],
        bias=cfg["bias"])


def custom_loss(a, q, s):
    """Per-example loss of the spherical family written in torch (uses a, q
    and s, so that every gradient column is exchanged)."""
    return q - 2 * a[:, 0] + 1 + 0.01 * s * s


class Whole(torch.nn.Module):
    """Body and output layer in one module (to wrap both in DDP)."""

    def __init__(self, body, out):
        super().__init__()
        self.body, self.out = body, out

    def forward(self, x, y):
        return self.out(self.body(x), y)


def train(cfg, rank, world, steps, start=0, out=None, body=None,
          save_at=None, ckpt_dir=None):
    """Train with DDP + DistributedFactoredOutput; returns the record."""
    X, Y = make_data(cfg["steps"], world)
    sl = slice(rank * m, (rank + 1) * m)
    if body is None:
        body = make_body(cfg["dtype"])
    if out is None:
        out = DistributedFactoredOutput(
            make_layer(cfg), cfg["lr"], reduction="mean", mode=cfg["mode"],
            timeout=30, check_every=cfg.get("check_every", 10))
    if cfg["loss"] == "custom":
        ddp = torch.nn.parallel.DistributedDataParallel(body)
        run = lambda x, y: custom_loss(   # noqa: E731
            *out.spherical_stats(ddp(x), y[:, None])).mean()
    elif cfg.get("whole"):     # DDP around the body *and* the output layer
        model = torch.nn.parallel.DistributedDataParallel(Whole(body, out))
        run = lambda x, y: model(x, y)   # noqa: E731
        ddp = model
    else:
        ddp = torch.nn.parallel.DistributedDataParallel(body)
        run = lambda x, y: out(ddp(x), y)   # noqa: E731
    opt = torch.optim.SGD(body.parameters(), lr=cfg["lr"])
    if ckpt_dir is not None and start > 0:
        opt.load_state_dict(torch.load(os.path.join(ckpt_dir, "opt.pt")))
    rec = {"losses": [], "grads": [], "ddp_params": sum(
        p.numel() for p in ddp.parameters()), "ddp_buffers": sum(
        b.numel() for b in ddp.buffers()), "body_params": sum(
        p.numel() for p in body.parameters())}
    for t in range(start, steps):
        if save_at is not None and t == save_at:
            rec["saved_digest"] = out.save(os.path.join(ckpt_dir, "layer.npz"))
            if rank == 0:
                torch.save(body.state_dict(), os.path.join(ckpt_dir, "body.pt"))
                torch.save(opt.state_dict(), os.path.join(ckpt_dir, "opt.pt"))
            dist.barrier()
        opt.zero_grad()
        x = torch.from_numpy(X[t, sl])
        y = torch.from_numpy(Y[t, sl])
        before = dict(out.stats)
        L = run(x, y)
        L.backward()
        rec.setdefault("bytes_sent", []).append(
            out.stats["bytes_sent"] - before["bytes_sent"])
        rec["losses"].append(L.item())
        rec["grads"].append([p.grad.numpy().copy() for p in body.parameters()])
        opt.step()
    layer = out.layer
    rec["W"], rec["b"] = layer.weights(), layer.bias()
    rec["body"] = [p.detach().numpy().copy() for p in body.parameters()]
    rec["fingerprint"] = fingerprint(layer)
    rec["checked"] = out.check_replicas(full=True)
    rec["steps"] = out.steps
    return rec, out, body


# ---------------------------------------------------------------- scenarios
EQUIV = [dict(loss=loss, mode=mode, dtype=dt, bias=bias, lr=lr, steps=100,
              whole=whole)
         # learning rates at which the trajectory does not amplify rounding:
         # a relative perturbation of 1e-15 of the initial weights stays
         # below 1e-13 over the 100 steps (float64)
         for loss, lr, bias in (("squared", 0.02, False),
                                ("spherical_softmax", 0.2, True))
         for mode in ("batch", "online")
         for dt in ("float64", "float32")
         for whole in [mode == "batch" and dt == "float32"]] + [
    dict(loss="custom", mode="batch", dtype=dt, bias=True, lr=0.02, steps=100,
         whole=False) for dt in ("float64", "float32")]


def scenario_equiv(rank, world):
    """Every configuration of EQUIV, 100 steps."""
    return {i: train(cfg, rank, world, cfg["steps"])[0]
            for i, cfg in enumerate(EQUIV)}


def _refused(rank, out, body, bad_rank, make_call):
    """Run one training call in which ``bad_rank`` passes bad input; return
    (exception type name, message, fingerprint before, after)."""
    fp0 = fingerprint(out.layer)
    steps0 = out.steps
    try:
        make_call(rank == bad_rank)
        res = ("none", "")
    except Exception as exc:          # noqa: BLE001 - recorded for the test
        res = (type(exc).__name__, str(exc))
    return {"error": res, "before": fp0, "after": fingerprint(out.layer),
            "steps_changed": out.steps != steps0}


def scenario_faults(rank, world):
    """Refused inputs on one rank, disagreeing calls, divergence detection,
    and a checkpoint restart that continues bit for bit."""
    res = {}
    for mode in ("batch", "online"):
        cfg = dict(loss="spherical_softmax", mode=mode, dtype="float32",
                   bias=True, lr=0.2, steps=6)
        rec, out, body = train(cfg, rank, world, 3)
        h = body(torch.from_numpy(make_data(6, world)[0][0, :m]))
        y = torch.arange(m)
        cases = {
            "index": lambda bad: out(h, y + D * bad).backward(),
            "shape": lambda bad: out(h[:, :d - 1] if bad else h, y).backward(),
            "nan": lambda bad: out(h * (float("nan") if bad else 1.0), y).backward(),
            "dtype": lambda bad: out(h.double() if bad else h, y).backward(),
            "K": lambda bad: out(h, (torch.stack([y, y], 1) if bad else y[:, None],
                                     None)).backward(),
        }
        for name, call in cases.items():
            res[mode, name] = _refused(rank, out, body, 1, call)
        lr0 = out.lr               # calls that disagree: lr
        out.lr = lr0 * (2 if rank == 1 else 1)
        res[mode, "lr"] = _refused(rank, out, body, 1, lambda bad: out(h, y).backward())
        out.lr = lr0
        # the group is still usable and the replicas identical
        out(h.detach(), y).backward()
        res[mode, "after"] = out.check_replicas(full=True)
    # divergence: rank 1 trains its replica outside the module
    cfg = dict(loss="squared", mode="batch", dtype="float64", bias=False,
               lr=0.02, steps=10, check_every=4)
    rec, out, body = train(cfg, rank, world, 3)
    if rank == 1:
        out.layer.step(np.ones((1, d)), np.array([5]), 0.01)
    try:
        out.check_replicas(full=True)
        res["diverged_on_demand"] = ("none", "")
    except ReplicaDivergenceError as exc:
        res["diverged_on_demand"] = ("ReplicaDivergenceError", str(exc), exc.ranks)
    try:                                # the scheduled (cheap) check, at step 4
        train(cfg, rank, world, 6, start=3, out=out, body=body)
        res["diverged_scheduled"] = ("none", "")
    except ReplicaDivergenceError as exc:
        res["diverged_scheduled"] = ("ReplicaDivergenceError", str(exc), exc.ranks,
                                     out.steps)
    # checkpoint: 20 steps saving at 10, then a restart from step 10
    ckpt = os.path.join(sys.argv[5], "ckpt")
    os.makedirs(ckpt, exist_ok=True)
    cfg = dict(loss="spherical_softmax", mode="batch", dtype="float32",
               bias=True, lr=0.2, steps=20)
    full, _, _ = train(cfg, rank, world, 20, save_at=10, ckpt_dir=ckpt)
    out = DistributedFactoredOutput.load(os.path.join(ckpt, "layer.npz"), cfg["lr"],
                                         reduction="mean", timeout=30)
    body = make_body(cfg["dtype"])
    body.load_state_dict(torch.load(os.path.join(ckpt, "body.pt")))
    again, _, _ = train(cfg, rank, world, 20, start=10, out=out, body=body,
                        ckpt_dir=ckpt)
    res["restart"] = {"full": full, "again": again}
    # a checkpoint that some rank cannot read: every rank raises
    path = os.path.join(ckpt, "layer.npz") if rank == 0 else os.path.join(ckpt, "missing.npz")
    try:
        DistributedFactoredOutput.load(path, 0.1, timeout=30)
        res["bad_load"] = ("none", "")
    except Exception as exc:     # noqa: BLE001
        res["bad_load"] = (type(exc).__name__, str(exc))
    return res


def scenario_kill(rank, world, how):
    """Rank 1 dies (SIGKILL) or raises and stays alive just before its 4th
    training call; rank 0 must raise DistributedError within the timeout."""
    cfg = dict(loss="squared", mode="batch", dtype="float32", bias=False,
               lr=0.05, steps=10)
    body = make_body(cfg["dtype"])
    out = DistributedFactoredOutput(make_layer(cfg), cfg["lr"], timeout=TIMEOUT)
    X, Y = make_data(cfg["steps"], world)
    sl = slice(rank * m, (rank + 1) * m)
    for t in range(10):
        h = body(torch.from_numpy(X[t, sl]))
        if rank == 1 and t == 3:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                raise RuntimeError("simulated failure of rank 1")
            except RuntimeError:
                time.sleep(60)      # alive, not calling the layer (the test kills it)
                return {"rank1": "slept"}
        start = time.monotonic()
        try:
            out(h, torch.from_numpy(Y[t, sl])).backward()
        except DistributedError as exc:
            return {"error": str(exc), "elapsed": time.monotonic() - start,
                    "step": t, "layer_steps": out.steps}
    return {"error": None}


TIMEOUT = 5.0


def main():
    scenario, rank, world, port, outdir = sys.argv[1:6]
    rank, world = int(rank), int(world)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        if scenario == "equiv":
            res = scenario_equiv(rank, world)
        elif scenario == "faults":
            res = scenario_faults(rank, world)
        else:
            res = scenario_kill(rank, world, scenario.split("-")[1])
    except Exception:         # noqa: BLE001 - reported to the test
        res = {"worker_error": traceback.format_exc()}
    with open(os.path.join(outdir, f"{scenario}-rank{rank}.pkl"), "wb") as f:
        pickle.dump(res, f)
    sys.stdout.flush()
    if scenario.startswith("kill"):
        os._exit(0)           # the group is broken: do not wait in its teardown
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
