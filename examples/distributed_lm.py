"""Data-parallel training of a neural language model with fastsparse.distributed.

Run it with torchrun (CPU, gloo)::

    torchrun --nproc-per-node 2 examples/distributed_lm.py
    torchrun --nproc-per-node 2 examples/distributed_lm.py --steps 600 \\
        --checkpoint ckpt --save-every 200      # ckpt/step-200/, ..., step-600/
    torchrun --nproc-per-node 2 examples/distributed_lm.py --steps 600 \\
        --resume ckpt/step-200                  # ends bit for bit as the first

The model and data are those of ``examples/lm_docstrings.py`` (its
functions are imported from it): an n-gram neural language model --
embeddings of the previous words, a tanh hidden layer, an output layer over
the whole vocabulary -- trained on the docstrings and comments of the
Python standard library.  Here it is trained data-parallel:

* the body (embeddings and hidden layer) is wrapped in
  ``DistributedDataParallel``, which all-reduces its gradients;
* the output layer is a :class:`fastsparse.FactoredOutputLayer` replicated
  on every rank and trained through
  :class:`fastsparse.distributed.DistributedFactoredOutput`: in its
  backward the ranks exchange their minibatches' hidden states, targets
  and loss gradients (m (d + 4) numbers per rank and step in float32, K = 1)
  and every replica applies the same update of the global minibatch.

Every step, rank r trains on its slice of the global minibatch (the global
minibatch of step t is drawn from the seed and t alone, so a restarted run
sees the same data).  The held-out loss is evaluated by all ranks on their
share of a fixed sample (eval mode: no exchange, no update) and summed.
Rank 0 prints a report (``--json PATH`` writes it); the replicas are
compared (full fingerprint) at the end.

``--help`` lists the options.  ``--dtype float64`` gives a run that one
process on the concatenated minibatches reproduces to 1e-13
(tests/test_distributed.py checks that equivalence on a smaller model).
"""
import argparse
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import fastsparse
from fastsparse.distributed import DistributedFactoredOutput
from fastsparse.torch import FactoredOutput

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_data  # noqa: E402
import lm_docstrings as lm  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Data-parallel n-gram language model on the standard "
                    "library's docstrings with fastsparse.distributed "
                    "(run with torchrun --nproc-per-node N).")
    g = p.add_argument_group("data")
    g.add_argument("--text", metavar="FILE", help="train on this text file "
                   "instead of the standard library's docstrings")
    g.add_argument("--max-files", type=int, default=400, metavar="N",
                   help="read only N standard-library files (default 400; "
                        "0: all, about 760 000 words)")
    g.add_argument("--max-vocab", type=int, metavar="N",
                   help="keep the N most frequent words")
    g.add_argument("--min-count", type=int, default=2)
    g.add_argument("--heldout", type=float, default=0.05, metavar="FRACTION")
    g = p.add_argument_group("model and training")
    g.add_argument("--loss", choices=lm.LOSSES, default="spherical_softmax")
    g.add_argument("--mode", choices=("batch", "online"), default="batch",
                   help="the output layer's update: one minibatch update of "
                        "the global minibatch, or one online update per "
                        "example in rank order")
    g.add_argument("--context", type=int, default=3)
    g.add_argument("--embed", type=int, default=64)
    g.add_argument("--hidden", type=int, default=128, metavar="d")
    g.add_argument("--batch-size", type=int, default=64, metavar="m",
                   help="examples per rank and step (the global minibatch "
                        "has m x world_size)")
    g.add_argument("--steps", type=int, default=600, help="total SGD steps")
    g.add_argument("--lr", type=float, help="learning rate of the body "
                   "(default: that of lm_docstrings.py for the loss)")
    g.add_argument("--lr-output", type=float, help="learning rate of the "
                   "output layer (batch mode: on the mean loss of the global "
                   "minibatch; online mode: per example)")
    g.add_argument("--init-scale", type=float, default=0.01)
    g.add_argument("--eps", type=float, default=0.1,
                   help="the spherical softmax's eps")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("distributed")
    g.add_argument("--backend", default="gloo",
                   help="of the default group (DDP); the output layer always "
                        "exchanges on a gloo group of its own")
    g.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long a rank waits for the others before raising")
    g.add_argument("--check-every", type=int, default=100, metavar="STEPS",
                   help="compare the replicas' cheap fingerprints every STEPS "
                        "steps (0: never)")
    g = p.add_argument_group("evaluation, checkpoints and output")
    g.add_argument("--eval-every", type=int, default=200, metavar="STEPS")
    g.add_argument("--eval-examples", type=int, default=4000, metavar="N")
    g.add_argument("--checkpoint", metavar="DIR",
                   help="save the layer (written by rank 0), the body and the "
                        "optimiser in DIR/step-N/ at the end (step N)")
    g.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                   help="also save every STEPS steps (with --checkpoint)")
    g.add_argument("--resume", metavar="DIR", help="continue from the checkpoint "
                   "in DIR (a DIR/step-N/ of --checkpoint)")
    g.add_argument("--json", metavar="PATH", help="write the report (rank 0)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def load_data(args, rank):
    """The same dataset on every rank (checked across ranks)."""
    quiet = open(os.devnull, "w") if rank or args.quiet else None
    if args.text:
        units = lm_data.read_text(args.text)
    else:
        files = lm_data.stdlib_files()
        if args.max_files:
            rng = np.random.default_rng(args.seed)
            files = [files[i] for i in sorted(rng.permutation(len(files))[:args.max_files])]
        units = lm_data.read_stdlib(files, progress_stream=quiet)
    data = lm_data.build_dataset(units, args.context, args.heldout, args.min_count,
                            args.max_vocab, args.seed)
    digest = hashlib.blake2b(data["X_train"].tobytes() + data["Y_train"].tobytes(),
                             digest_size=16).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks built different datasets: {digests}")
    return data


def global_batch(t, n, size, seed):
    """Indices of the global minibatch of step t (drawn from (seed, t) only,
    so that a restarted run sees the same minibatches)."""
    return np.random.default_rng([seed, 7, t]).integers(0, n, size)


def evaluate(layer, body, X, Y, rank, world, chunk=1024):
    """Mean held-out loss: every rank its share, summed over the ranks.

    A local FactoredOutput with lr = 0 on the replica (no exchange, no
    update) and the plain body (not the DDP wrapper: no collective)."""
    head = FactoredOutput(layer, 0.0, reduction="sum")
    mine = slice(rank * len(Y) // world, (rank + 1) * len(Y) // world)
    total = torch.zeros(2, dtype=torch.float64)
    body.eval()
    with torch.no_grad():
        Xr, Yr = X[mine], Y[mine]
        for s in range(0, len(Yr), chunk):
            total[0] += float(head(body(torch.from_numpy(Xr[s:s + chunk])),
                                   torch.from_numpy(Yr[s:s + chunk])))
        total[1] = len(Yr)
    body.train()
    dist.all_reduce(total)
    return float(total[0] / total[1])


def save_checkpoint(directory, out, body, opt, step, rank):
    """The layer's file from rank 0 (after a full replica check); the body,
    optimiser and step by rank 0 too, written atomically."""
    os.makedirs(directory, exist_ok=True)
    out.save(os.path.join(directory, "layer.npz"))
    if rank == 0:
        tmp = os.path.join(directory, f".body.pt.{os.getpid()}.tmp")
        torch.save({"body": body.state_dict(), "opt": opt.state_dict(),
                    "step": step}, tmp)
        os.replace(tmp, os.path.join(directory, "body.pt"))
    dist.barrier()


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group(args.backend,
                            timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    data = load_data(args, rank)
    vocab = data["vocab"]
    D, m, M = len(vocab), args.batch_size, args.batch_size * world
    dtype = np.dtype(args.dtype)
    lr, lr_out = lm.DEFAULT_LR[args.loss]
    lr = args.lr if args.lr is not None else lr
    lr_out = args.lr_output if args.lr_output is not None else lr_out
    loss = (fastsparse.losses.SphericalSoftmax(eps=args.eps)
            if args.loss == "spherical_softmax" else "squared")

    # the same initial model on every rank (DDP also broadcasts the body's)
    torch.manual_seed(args.seed)
    body = lm.build_body(D, args.context, args.embed, args.hidden, 1, args.dtype)
    opt = torch.optim.SGD(body.parameters(), lr=lr)
    start = 0
    if args.resume:
        out = DistributedFactoredOutput.load(
            os.path.join(args.resume, "layer.npz"), lr_out, loss=None,
            reduction="mean", mode=args.mode, timeout=args.timeout,
            check_every=args.check_every)
        state = torch.load(os.path.join(args.resume, "body.pt"))
        body.load_state_dict(state["body"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        say(f"resumed from {args.resume} at step {start}")
    else:
        W0 = np.random.default_rng([args.seed, 1]).standard_normal(
            (D, args.hidden)) * args.init_scale
        b0 = lm_data.unigram_bias(vocab.counts, args.loss, args.eps)
        layer = fastsparse.FactoredOutputLayer.from_weights(
            W0.astype(dtype), bias=b0.astype(dtype), loss=loss)
        out = DistributedFactoredOutput(layer, lr_out, reduction="mean",
                                        mode=args.mode, timeout=args.timeout,
                                        check_every=args.check_every)
    ddp = torch.nn.parallel.DistributedDataParallel(body)

    n = len(data["Y_train"])
    say(f"{world} ranks; vocabulary D = {D}, d = {args.hidden}, {n} training "
        f"examples; global minibatch {M} = {world} x {m}; loss {args.loss}, "
        f"mode {args.mode}, {args.dtype}")
    Xh, Yh = data["X_heldout"], data["Y_heldout"]
    if args.eval_examples and len(Yh) > args.eval_examples:
        pick = np.sort(np.random.default_rng([args.seed, 3]).permutation(
            len(Yh))[:args.eval_examples])
        Xh, Yh = Xh[pick], Yh[pick]
    report = {"world_size": world, "D": D, "d": args.hidden,
              "global_batch": M, "loss": args.loss, "mode": args.mode,
              "dtype": args.dtype, "start_step": start, "steps": args.steps,
              "unigram_heldout": lm_data.unigram_baselines(vocab.counts, Yh, args.loss,
                                                      args.eps),
              "train_losses": [], "evals": []}
    report["evals"].append((start, evaluate(out.layer, body, Xh, Yh, rank, world)))
    say(f"step {start:6d}  held-out loss {report['evals'][-1][1]:.4f} "
        f"(unigram model {report['unigram_heldout']:.4f})")

    sl = slice(rank * m, (rank + 1) * m)
    t_step, t_out = [], []
    exch = {"seconds": 0.0, "bytes_sent": 0, "bytes_received": 0}
    for t in range(start, args.steps):
        idx = global_batch(t, n, M, args.seed)[sl]
        x = torch.from_numpy(data["X_train"][idx])
        y = torch.from_numpy(data["Y_train"][idx])
        t0 = time.perf_counter()
        opt.zero_grad()
        h = ddp(x)
        hd = h.detach().requires_grad_()      # to time the output layer apart
        t1 = time.perf_counter()
        before = dict(out.stats)
        L = out(hd, y)                        # header exchange (collective)
        L.backward()                          # minibatch exchange + update
        t2 = time.perf_counter()
        for k in exch:
            exch[k] += out.stats[k] - before[k]
        h.backward(hd.grad)                   # DDP all-reduces the body's grads
        opt.step()
        t3 = time.perf_counter()
        t_step.append(t3 - t0)
        t_out.append(t2 - t1)
        report["train_losses"].append(L.item())
        if not np.isfinite(report["train_losses"][-1]):
            raise FloatingPointError(f"the loss is not finite at step {t}")
        if (t + 1) % args.eval_every == 0 or t + 1 == args.steps:
            report["evals"].append((t + 1, evaluate(out.layer, body, Xh, Yh, rank, world)))
            if not args.quiet:
                say(f"step {t + 1:6d}  held-out loss {report['evals'][-1][1]:.4f}  "
                    f"train {np.mean(report['train_losses'][-args.eval_every:]):.4f}  "
                    f"{np.median(t_step[-args.eval_every:]) * 1e3:.1f} ms/step")
        if args.checkpoint and args.save_every and (t + 1) % args.save_every == 0 \
                and t + 1 < args.steps:
            save_checkpoint(os.path.join(args.checkpoint, f"step-{t + 1}"), out,
                            body, opt, t + 1, rank)

    steps = max(1, args.steps - start)
    report["fingerprint"] = out.check_replicas(full=True)
    if args.checkpoint:
        save_checkpoint(os.path.join(args.checkpoint, f"step-{args.steps}"), out,
                        body, opt, args.steps, rank)
    report.update({
        "ms_per_step": 1e3 * float(np.median(t_step)) if t_step else None,
        "ms_output_layer_per_step": 1e3 * float(np.median(t_out)) if t_out else None,
        "ms_exchange_per_step": 1e3 * exch["seconds"] / steps,
        "bytes_sent_per_step": exch["bytes_sent"] / steps,
        "bytes_received_per_step": exch["bytes_received"] / steps,
        "dense_gradient_bytes": D * (args.hidden + 1) * dtype.itemsize,
        "body_gradient_bytes": sum(p.numel() * p.element_size()
                                   for p in body.parameters()),
        "health": {k: v for k, v in out.layer.health().items()
                   if isinstance(v, (int, float))},
    })
    say(f"replicas identical (fingerprint {report['fingerprint'][:16]}); "
        f"median step {report['ms_per_step']:.1f} ms, output layer "
        f"{report['ms_output_layer_per_step']:.1f} ms of which exchange "
        f"{report['ms_exchange_per_step']:.2f} ms; each rank sent "
        f"{report['bytes_sent_per_step'] / 1e3:.1f} kB per step for the output "
        f"layer (a dense output layer's gradient: "
        f"{report['dense_gradient_bytes'] / 1e6:.1f} MB)")
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    dist.destroy_process_group()
    return report


if __name__ == "__main__":
    main()
