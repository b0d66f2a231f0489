"""Quality per CPU-second: the factored output layer against dense softmax
and ``torch.nn.AdaptiveLogSoftmaxWithLoss`` on a next-word model.

Model (the same body for every variant): the 3 previous words -> embeddings
of 64 (sparse gradients) -> Linear(192, d) + tanh -> an output layer over
the whole vocabulary D.  Plain SGD, minibatches of 128, float32, one thread,
mean loss over the minibatch.  Output layers / losses (``--variants``):

* ``dense``: ``nn.Linear(d, D)`` + softmax cross-entropy;
* ``adaptive``: ``nn.AdaptiveLogSoftmaxWithLoss(d, D, cutoffs=[2000, 10000],
  div_value=4)`` (the vocabulary is sorted by frequency);
* ``fs-spherical``, ``fs-zloss``, ``fs-squared``:
  ``fastsparse.torch.FactoredOutput`` over a ``FactoredOutputLayer(D, d,
  bias=True)`` with the spherical softmax, the z-loss or the squared error.

A variant may carry settings after a colon, e.g.
``fs-spherical:eps=0.3,d=256,bias_init=unigram,schedule=linear`` (see
``VARIANT_KEYS``); its label is the whole string.

Each run trains for a fixed **CPU budget**: ``time.process_time()`` of the
training loop only (evaluation, outside it, is free), checked after every
step.  With a constant learning rate one run up to the largest budget gives
every smaller budget as a checkpoint; a run with a schedule
(``schedule=linear``: decay to 0 at the budget) is run once per budget.
Reported per budget: examples seen, time per step of the output layer
(forward + backward + update; mean and median), top-1 and top-10 accuracy
of the next word among all D words and perplexity (where the loss defines
probabilities: softmax, adaptive softmax, spherical softmax) on the test
slice.  Learning rates: one rate for the body and the output layer, tuned
the same way for every variant (``--tune``): a grid, each point trained for
``--tune-budget`` CPU seconds and scored by top-10 accuracy on the
validation slice (disjoint from the test slice); the tuned rates are kept
in ``--lrs`` (JSON) and reused.

Corpus: by default GCIDE from the Debian package ``dict-gcide`` 0.48.5+nmu2
(``/usr/share/dictd/gcide.dict.dz``; see ``bench/_corpus.py``): 5.4 M word
tokens, 74 020 training types seen at least 3 times (D = 74 023 with
``<unk>``, ``<s>``, ``</s>``).  Paragraphs are shuffled and split: test
slice 20 000 tokens, validation slice 5 000, the rest for training.
Nothing is fetched at run time; a missing corpus is reported with the
command that installs it.  ``--corpus FILE`` takes any UTF-8 text.

Run heavy jobs on one core:
``OMP_NUM_THREADS=1 taskset -c 1 python bench/compare_quality.py --tune``.
``--help`` lists the options.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _corpus import DEFAULT_CORPUS, CorpusMissing, load_corpus  # noqa: E402
from _tools import cpu_model, git_revision  # noqa: E402

#: variants of the comparison before the levers
DEFAULT_VARIANTS = ["dense", "adaptive", "fs-spherical", "fs-zloss", "fs-squared"]
#: base settings of each variant; ``name:key=value,...`` overrides them
BASES = {
    "dense": {"kind": "dense"},
    "adaptive": {"kind": "adaptive", "cutoffs": "2000/10000", "div_value": 4.0},
    "fs-spherical": {"kind": "factored", "loss": "spherical_softmax", "eps": 0.1},
    "fs-zloss": {"kind": "factored", "loss": "z_loss", "alpha": 0.1, "beta": 10.0},
    "fs-squared": {"kind": "factored", "loss": "squared"},
}
#: settings a variant may override, with their defaults
VARIANT_KEYS = {
    "d": 128,                # hidden units (input of the output layer)
    "lr": None,              # learning rate (None: tuned or default)
    "lr_out": 1.0,           # output layer's lr relative to the body's
    "schedule": "const",     # const | linear (to 0 at the budget)
    "bias_init": "zero",     # factored: zero | unigram
    "init_scale": None,      # factored: std of the initial W (None: 1/sqrt(d))
    "mode": "batch",         # factored: batch (FactoredOutput) | online
    "max_cond": None,        # factored: stability={"max_cond": ...}
    "min_abs_r": None,       # factored: stability={"min_abs_r": ...}
    "check_every": None,     # factored: stability={"check_every": ...}
    "eps": None, "alpha": None, "beta": None,      # loss parameters
    "cutoffs": None, "div_value": None, "head_bias": 0,  # adaptive
}
#: learning-rate grid of --tune (the same for every variant; 10: the
#: z-loss's best at 60 s lay above 3, the former top)
LR_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_LR = 0.3


def parse_variant(label):
    """The settings of a variant label ``base[:key=value,...]``."""
    base, _, rest = label.partition(":")
    if base not in BASES:
        raise ValueError(f"unknown variant {base!r}; expected one of {sorted(BASES)}")
    cfg = dict(VARIANT_KEYS)
    cfg.update(BASES[base])
    cfg["base"], cfg["label"] = base, label
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in VARIANT_KEYS:
            raise ValueError(f"variant {label!r}: bad setting {item!r}; keys: "
                             f"{sorted(VARIANT_KEYS)}")
        try:
            value = float(value)
            value = int(value) if value.is_integer() and key in ("d", "head_bias") else value
        except ValueError:
            pass
        cfg[key] = value
    if cfg["mode"] not in ("batch", "online"):
        raise ValueError(f"variant {label!r}: mode must be batch or online")
    if cfg["schedule"] not in ("const", "linear"):
        raise ValueError(f"variant {label!r}: schedule must be const or linear")
    return cfg


# ================================================================ the model
class Body:
    """Embeddings of the context words -> Linear(n_context * 64, d) -> tanh."""

    def __init__(self, n_words, n_context, d, lr, n_embed=64):
        import torch
        from torch import nn
        self.net = nn.Sequential(nn.Embedding(n_words, n_embed, sparse=True),
                                 nn.Flatten(), nn.Linear(n_context * n_embed, d),
                                 nn.Tanh())
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)


class DenseHead:
    """nn.Linear(d, D) + softmax cross-entropy."""

    has_proba = True

    def __init__(self, cfg, D, d, lr, counts):
        import torch
        self.torch = torch
        self.lin = torch.nn.Linear(d, D)
        self.opt = torch.optim.SGD(self.lin.parameters(), lr=lr)

    def set_lr(self, lr):
        for g in self.opt.param_groups:
            g["lr"] = lr

    def train(self, h, y):
        loss = self.torch.nn.functional.cross_entropy(self.lin(h), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def prepare_eval(self):
        self.W = self.lin.weight.detach().numpy()
        self.b = self.lin.bias.detach().numpy()

    def scores(self, h, y, buf):
        """Ranking scores of all D words in ``buf`` (m, D) and log p(y)
        (m,) or None; ``h`` (m, d) and ``y`` (m,) are NumPy arrays."""
        np.matmul(h, self.W.T, out=buf)
        buf += self.b
        return buf, None

    def log_proba(self, buf, y):
        """log p(y) (m,) from the scores; may overwrite ``buf``."""
        st = buf[np.arange(len(y)), y].astype(np.float64)
        mx = buf.max(1, keepdims=True)
        buf -= mx
        np.exp(buf, out=buf)
        return st - mx[:, 0] - np.log(buf.sum(1, dtype=np.float64))

    def extra(self):
        return {}


class AdaptiveHead(DenseHead):
    """nn.AdaptiveLogSoftmaxWithLoss."""

    def __init__(self, cfg, D, d, lr, counts):
        import torch
        self.torch = torch
        cutoffs = [int(c) for c in str(cfg["cutoffs"]).split("/") if int(c) < D - 1]
        self.asm = torch.nn.AdaptiveLogSoftmaxWithLoss(
            d, D, cutoffs=cutoffs, div_value=float(cfg["div_value"]),
            head_bias=bool(cfg["head_bias"]))
        self.opt = torch.optim.SGD(self.asm.parameters(), lr=lr)

    def train(self, h, y):
        loss = self.asm(h, y).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def prepare_eval(self):
        pass

    def scores(self, h, y, buf):
        logp = self.asm.log_prob(self.torch.from_numpy(h)).numpy()
        return logp, logp[np.arange(len(y)), y].astype(np.float64)


class FactoredHead:
    """fastsparse.torch.FactoredOutput over a FactoredOutputLayer."""

    def __init__(self, cfg, D, d, lr, counts, seed=0):
        import torch
        import fastsparse
        from fastsparse import losses
        from fastsparse.torch import FactoredOutput
        self.torch = torch
        name = cfg["loss"]
        if name == "spherical_softmax":
            loss = losses.SphericalSoftmax(eps=cfg["eps"])
        elif name == "z_loss":
            loss = losses.ZLoss(alpha=cfg["alpha"], beta=cfg["beta"])
        else:
            loss = losses.get_loss(name)
        self.loss = loss
        self.has_proba = loss.has_proba
        bias = True
        if cfg["bias_init"] == "unigram":    # add-one smoothed target counts
            bias = loss.prior_bias(counts + 1.0).astype(np.float32)
        elif cfg["bias_init"] != "zero":
            raise ValueError(f"bias_init must be zero or unigram, got {cfg['bias_init']!r}")
        stability = {k: (int(cfg[k]) if k == "check_every" else cfg[k])
                     for k in ("max_cond", "min_abs_r", "check_every")
                     if cfg[k] is not None}
        kw = {"stability": stability} if stability else {}
        self.layer = fastsparse.FactoredOutputLayer(
            D, d, loss=loss, bias=bias, dtype=np.float32, seed=seed,
            init_scale=cfg["init_scale"], **kw)
        self.mode = cfg["mode"]
        if self.mode not in ("batch", "online"):
            raise ValueError(f"mode must be batch or online, got {self.mode!r}")
        self.out = FactoredOutput(self.layer, lr=lr, reduction="mean")
        self.lr = lr

    def set_lr(self, lr):
        self.out.lr = self.lr = lr

    def train(self, h, y):
        if self.mode == "online":
            # one exact update per example, in order (layer.step); the body
            # gets the mean of the gradients each example saw, as with the
            # mean loss; per-example lr = lr / m (the minibatch step's scale)
            m = len(y)
            loss, gH = self.layer.step(h.detach().numpy(), y.numpy(), self.lr / m,
                                       mode="online")
            h.grad = self.torch.from_numpy(gH / np.float32(m))
            return float(loss.mean())
        loss = self.out(h, y)
        loss.backward()
        return loss.item()

    def prepare_eval(self):
        self.W = np.ascontiguousarray(self.layer.weights())
        self.b = np.ascontiguousarray(self.layer.bias())

    def scores(self, h, y, buf):
        np.matmul(h, self.W.T, out=buf)
        buf += self.b
        if self.loss.name == "spherical_softmax":   # p = (o^2 + eps) / sum
            np.square(buf, out=buf)
            buf += np.float32(self.loss.eps)
            st = buf[np.arange(len(y)), y].astype(np.float64)
            return buf, np.log(st) - np.log(buf.sum(1, dtype=np.float64))
        return buf, None        # z-loss and squared error: rank by the output

    def extra(self):
        hl = self.layer.health()
        return {k: hl[k] for k in ("n_checks", "n_renormalizations",
                                    "n_inverse_refreshes", "n_rescales",
                                    "n_near_singular_updates", "control_seconds",
                                    "cond")}


def make_head(cfg, D, d, lr, counts, seed):
    if cfg["kind"] == "dense":
        return DenseHead(cfg, D, d, lr, counts)
    if cfg["kind"] == "adaptive":
        return AdaptiveHead(cfg, D, d, lr, counts)
    return FactoredHead(cfg, D, d, lr, counts, seed)


# ============================================================ evaluation
def evaluate(body, head, X, Y, chunk=64):
    """top-1, top-10 (%) and perplexity (None without probabilities) of the
    next word among all D words.  A tie with the target counts against it."""
    import torch
    head.prepare_eval()
    n1 = n10 = 0
    nll = 0.0
    proba = True
    buf = None
    with torch.no_grad():
        for start in range(0, len(Y), chunk):
            x = torch.from_numpy(X[start:start + chunk].astype(np.int64))
            y = Y[start:start + chunk]
            h = body.net(x).numpy()
            if buf is None or buf.shape[0] != len(y):
                buf = np.empty((len(y), len(head.b) if hasattr(head, "b")
                                else head.asm.n_classes), dtype=np.float32)
            s, logp = head.scores(h, y, buf)
            st = s[np.arange(len(y)), y]
            rank = np.count_nonzero(s >= st[:, None], axis=1) - 1  # others >= target
            n1 += int((rank < 1).sum())
            n10 += int((rank < 10).sum())
            if logp is None and head.has_proba:
                logp = head.log_proba(s, y)
            if logp is None:
                proba = False
            else:
                nll -= float(logp.sum())
    n = len(Y)
    return {"top1": 100.0 * n1 / n, "top10": 100.0 * n10 / n,
            "ppl": math.exp(nll / n) if proba else None}


# ============================================================== training
def train_run(cfg, data, budgets, lr, seed, *, eval_set="test", extra_points=(),
              batch=128, log=None):
    """Train one variant; evaluate at each CPU budget (and extra points).

    Returns a list of checkpoint dicts, in order of CPU time.
    """
    import torch
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X, Y = data["X_train"], data["Y_train"]
    Xe, Ye = data["X_" + eval_set], data["Y_" + eval_set]
    D = len(data["counts"])
    d = int(cfg["d"])
    horizon = max(budgets)
    body = Body(D, X.shape[1], d, lr)
    head = make_head(cfg, D, d, lr * cfg["lr_out"], data["counts"], seed)
    points = sorted(set(budgets) | {p for p in extra_points if p < horizon})
    out, order, pos = [], rng.permutation(len(Y)), 0
    cpu = 0.0
    head_times, steps, diverged, loss = [], 0, False, float("nan")
    while points:
        t0 = time.process_time()
        if pos + batch > len(order):
            order, pos = rng.permutation(len(Y)), 0
        idx = order[pos:pos + batch]
        pos += batch
        if cfg["schedule"] == "linear":
            f = max(0.0, 1.0 - cpu / horizon)
            for g in body.opt.param_groups:
                g["lr"] = lr * f
            head.set_lr(lr * cfg["lr_out"] * f)
        x = torch.from_numpy(X[idx].astype(np.int64))
        y = torch.from_numpy(Y[idx])
        h = body.net(x)
        hd = h.detach().requires_grad_()
        t1 = time.process_time()
        try:
            loss = head.train(hd, y)
        except ValueError as exc:                  # StepRefusedError
            diverged = f"refused step: {exc}"
        t2 = time.process_time()
        if not diverged and not math.isfinite(loss):
            diverged = "non-finite loss"
        if not diverged:
            h.backward(hd.grad)
            body.opt.step()
            body.opt.zero_grad(set_to_none=True)
        cpu += time.process_time() - t0
        head_times.append(t2 - t1)
        steps += 1
        if diverged or cpu >= points[0]:
            ht = np.array(head_times)
            rec = {"cpu": cpu, "steps": steps, "examples": steps * batch,
                   "head_ms_mean": 1e3 * ht.mean(), "head_ms_median": 1e3 * np.median(ht),
                   "step_ms_mean": 1e3 * cpu / steps, "train_loss": loss}
            if diverged:
                rec.update(top1=float("nan"), top10=float("nan"), ppl=None,
                           diverged=diverged)
                out.append(rec)
                break
            t3 = time.perf_counter()
            rec.update(evaluate(body, head, Xe, Ye))
            rec.update(head.extra())
            rec["budget"] = points[0] if points[0] in budgets else None
            rec["eval_s"] = time.perf_counter() - t3
            out.append(rec)
            if log:
                log(f"  {cfg['label']} lr={lr:g} seed={seed}: {cpu:6.1f} s CPU, "
                    f"{steps * batch / 1e6:.2f} M examples, top-1 {rec['top1']:.2f} "
                    f"top-10 {rec['top10']:.2f} ppl {fmt(rec['ppl'], '.0f')} "
                    f"(head {rec['head_ms_mean']:.2f} ms/step; eval {rec['eval_s']:.0f} s)")
            points.pop(0)
    return out


def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


# ============================================================== tuning
def tune(cfg, data, args, log):
    """The grid learning rate with the best validation top-10 after
    ``--tune-budget`` CPU seconds (diverged runs lose)."""
    scores = {}
    for lr in args.lr_grid:
        res = train_run(cfg, data, [args.tune_budget], lr, 0, eval_set="valid",
                        batch=args.batch)[-1]
        scores[lr] = res["top10"] if not res.get("diverged") else -1.0
        log(f"  tune {cfg['label']}: lr {lr:g} -> valid top-10 {fmt(res['top10'], '.2f')}"
            f" top-1 {fmt(res['top1'], '.2f')} ppl {fmt(res['ppl'], '.0f')}"
            + (f" ({res['diverged'][:60]})" if res.get("diverged") else ""))
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


# ============================================================== reporting
def table(results, budgets):
    """Markdown table rows: one per (budget, variant), seed 0, with the
    seeds' spread (min-max) where there are several."""
    lines = ["| output layer + loss | budget | lr | examples seen | ms/step output layer "
             "(mean; median) | top-1 % | top-10 % | perplexity |",
             "|---|---|---|---|---|---|---|---|"]
    for b in budgets:
        for label, runs in results.items():
            recs = [next((c for c in r["checkpoints"] if c.get("budget") == b
                          or (c.get("diverged") and c["cpu"] <= b)), None)
                    for r in runs]
            recs = [(r, c) for r, c in zip(runs, recs) if c is not None]
            if not recs:
                continue
            run0, c = recs[0]

            def cell(key, spec):
                v = fmt(c.get(key), spec)
                vals = [x.get(key) for _, x in recs if x.get(key) is not None]
                if len(vals) > 1:
                    v += f" ({min(vals):{spec}}–{max(vals):{spec}})"
                return v
            lines.append(
                f"| {label} | {b:g} s | {run0['lr']:g} | {cell('examples', ',')} | "
                f"{c['head_ms_mean']:.1f}; {c['head_ms_median']:.1f} | "
                f"{cell('top1', '.2f')} | {cell('top10', '.2f')} | {cell('ppl', '.0f')} |"
                + (f" diverged: {c['diverged'][:40]}" if c.get("diverged") else ""))
    return "\n".join(lines)


def plot(results, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, runs) in enumerate(results.items()):
        cps = [c for c in runs[0]["checkpoints"] if not c.get("diverged")]
        if not cps:
            continue
        x = [c["cpu"] for c in cps]
        color = cycle[n % len(cycle)]      # one colour per variant, every panel
        for ax, key in zip(axes, ("top1", "top10", "ppl")):
            y = [c[key] for c in cps]
            if any(v is None for v in y):
                continue
            line, = ax.plot(x, y, "o-", label=label, ms=4, color=color)
            for c in cps:        # seeds' spread at the budgets
                if c.get("budget") is None or len(runs) < 2:
                    continue
                vals = [cc[key] for r in runs[1:] for cc in r["checkpoints"]
                        if cc.get("budget") == c["budget"] and cc.get(key) is not None]
                vals.append(c[key])
                ax.plot([c["cpu"]] * 2, [min(vals), max(vals)], "-",
                        color=line.get_color(), lw=6, alpha=0.35)
    for ax, name in zip(axes, ("top-1 accuracy (%)", "top-10 accuracy (%)",
                               "perplexity")):
        ax.set_xlabel("training CPU time (s, one thread)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[2].set_title("(only the losses that define probabilities)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def environment(data, args):
    import torch
    return {"machine": cpu_model(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "commit": git_revision() or "",
            "corpus": data["source"], "words": data["n_words"], "types": data["n_types"],
            "D": int(len(data["counts"])), "train": int(len(data["Y_train"])),
            "valid": int(len(data["Y_valid"])), "test": int(len(data["Y_test"])),
            "min_count": args.min_count, "batch": args.batch}


# ================================================================== main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=DEFAULT_CORPUS, metavar="FILE",
                   help=f"text file (plain, .gz or .dz); default {DEFAULT_CORPUS} "
                        "(Debian package dict-gcide)")
    p.add_argument("--min-count", type=int, default=3,
                   help="vocabulary: training words seen at least this often (default 3)")
    p.add_argument("--test-tokens", type=int, default=20_000)
    p.add_argument("--valid-tokens", type=int, default=5_000)
    p.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, metavar="V",
                   help="variants, base[:key=value,...] (default: %(default)s); "
                        "none with --include: only report the included runs")
    p.add_argument("--budgets", type=float, nargs="+", default=[60.0, 180.0],
                   metavar="S", help="CPU budgets in seconds (default 60 180)")
    p.add_argument("--plot-points", type=float, nargs="*", default=[20.0],
                   metavar="S", help="extra evaluations of constant-lr runs for "
                                     "the plot (default 20)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant (default 1)")
    p.add_argument("--seed-variants", nargs="*", metavar="V",
                   help="run --seeds seeds only for these variants (others: seed 0)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tune", action="store_true",
                   help="tune the lr of each variant without one in --lrs")
    p.add_argument("--lr-grid", type=float, nargs="+", default=list(LR_GRID))
    p.add_argument("--tune-budget", type=float, default=20.0, metavar="S")
    p.add_argument("--lrs", default=None, metavar="JSON",
                   help="tuned learning rates, read and updated "
                        "(default bench/results/quality-lrs.json)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--include", nargs="*", default=[], metavar="JSON",
                   help="add the runs of earlier --json files (same corpus) to the "
                        "table and plot; variants run now take precedence")
    p.add_argument("--plot", metavar="PNG", help="write the plot (needs matplotlib)")
    p.add_argument("--cache-dir", metavar="DIR", help="corpus cache directory")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    args = p.parse_args(argv)
    try:
        args.cfgs = [parse_variant(v) for v in args.variants]
    except ValueError as exc:
        p.error(str(exc))
    if args.lrs is None:
        args.lrs = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "results", "quality-lrs.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)   # noqa: E731
    try:
        data = load_corpus(args.corpus, min_count=args.min_count,
                           n_test=args.test_tokens, n_valid=args.valid_tokens,
                           cache_dir=args.cache_dir, log=log)
    except CorpusMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = environment(data, args)
    print(f"corpus: {env['corpus']}: {env['words']:,} words, {env['types']:,} types; "
          f"vocabulary D = {env['D']:,} (training words seen >= {args.min_count} times, "
          f"+ <unk> <s> </s>); examples train {env['train']:,}, valid {env['valid']:,}, "
          f"test {env['test']:,}", flush=True)
    lrs = {}
    if os.path.isfile(args.lrs):
        with open(args.lrs) as f:
            lrs = json.load(f)
    tune_key = lambda cfg: (f"{cfg['label']}|budget={args.tune_budget:g}|"  # noqa: E731
                            f"grid={','.join(f'{g:g}' for g in args.lr_grid)}|"
                            f"batch={args.batch}|D={env['D']}")
    results = {}
    for cfg in args.cfgs:
        label = cfg["label"]
        if cfg["lr"] is not None:
            lr = cfg["lr"]
        elif tune_key(cfg) in lrs:
            lr = lrs[tune_key(cfg)]["lr"]
        elif args.tune:
            lr, scores = tune(cfg, data, args, log)
            lrs[tune_key(cfg)] = {"lr": lr, "valid_top10": {f"{k:g}": v for k, v in scores.items()}}
            os.makedirs(os.path.dirname(os.path.abspath(args.lrs)), exist_ok=True)
            with open(args.lrs, "w") as f:
                json.dump(lrs, f, indent=1, sort_keys=True)
        else:
            lr = DEFAULT_LR
        n_seeds = args.seeds if (args.seed_variants is None
                                 or label in args.seed_variants) else 1
        runs = []
        for seed in range(n_seeds):
            if cfg["schedule"] == "const":
                cps = train_run(cfg, data, args.budgets, lr, seed,
                                extra_points=args.plot_points, batch=args.batch, log=log)
            else:                          # the schedule depends on the budget
                cps = []
                for b in args.budgets:
                    cps += [c for c in train_run(cfg, data, [b], lr, seed,
                                                 batch=args.batch, log=log)]
            runs.append({"seed": seed, "lr": lr, "checkpoints": cps})
        results[label] = runs
    for path in args.include:
        with open(path) as f:
            old = json.load(f)
        if old["environment"]["D"] != env["D"]:
            print(f"error: {path} was run on another vocabulary (D = "
                  f"{old['environment']['D']})", file=sys.stderr)
            return 2
        for label, runs in old["results"].items():
            results.setdefault(label, runs)
    print()
    print(table(results, args.budgets))
    fac = [(lab, r["checkpoints"][-1]) for lab, runs in results.items() for r in runs[:1]
           if "n_renormalizations" in r["checkpoints"][-1]]
    if fac:
        print("\nnumerical-health control at the end of each factored run (seed 0):")
        for lab, c in fac:
            print(f"  {lab}: {c['n_renormalizations']} renormalisations, "
                  f"{c['n_inverse_refreshes']} inverse refreshes, {c['n_checks']} checks, "
                  f"{c['n_near_singular_updates']} near-singular updates, "
                  f"{c['control_seconds']:.2f} s of {c['cpu']:.0f} s; cond(U) {c['cond']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "budgets": args.budgets,
                       "results": results}, f, indent=1)
    if args.plot:
        ds = sorted({str(c["d"]) for c in args.cfgs}) or [f"{VARIANT_KEYS['d']} unless labelled"]
        title = (f"{env['corpus']}: D = {env['D']:,}, d = {'/'.join(ds)}, "
                 f"minibatch {args.batch}, one thread")
        if plot(results, args.plot, title):
            print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
