"""The report of examples/lm_docstrings.py: tables, neighbours, plot."""
import math
import os
import platform

import numpy as np

from fastsparse.utils import format_table, format_time


def cosine_neighbours(W, vocab, words, k=5, pool=None):
    """The k nearest rows of W to each word's row, by cosine similarity.

    Parameters
    ----------
    W : ndarray of shape (D, d)
        Output embeddings (row j: word j).
    vocab : Vocabulary
    words : list of str
        Words of the vocabulary (others are skipped).
    k : int
    pool : int, optional
        Candidates: only the ``pool`` most frequent words (the rows of rare
        words were updated too rarely to have moved far from their random
        initial values).  Default: every word.

    Returns
    -------
    dict
        word -> list of (neighbour, cosine), best first; the special tokens
        are never neighbours.
    """
    Wn = W.astype(np.float64)
    Wn /= np.maximum(np.linalg.norm(Wn, axis=1, keepdims=True), 1e-300)
    end = len(vocab) if pool is None else min(len(vocab), 3 + pool)
    result = {}
    for w in words:
        i = vocab.index.get(w)
        if i is None or i < 3:
            continue
        sim = Wn[:end] @ Wn[i]
        sim[:3] = -np.inf
        if i < end:
            sim[i] = -np.inf
        best = np.argsort(-sim, kind="stable")[:k]
        result[w] = [(vocab.words[j], float(sim[j])) for j in best]
    return result


def default_probe_words(vocab, n=8, min_len=4):
    """The n most frequent words of at least ``min_len`` letters."""
    return [w for w in vocab.words[3:] if len(w) >= min_len][:n]

def plot_curves(results, path, smooth=None):
    """Write a PNG of both copies' loss curves, one panel per loss.

    Top: training loss per step (moving average over ``smooth`` steps) of
    both copies, and their held-out loss at the evaluation points; bottom:
    the relative difference of the two copies' per-step losses (and of the
    naive reference's, when it was trained).

    Parameters
    ----------
    results : list of dict
        As returned by :func:`train_pair`.
    path : str
    smooth : int, optional
        Width of the moving average; default 1/50 of the number of steps.

    Returns
    -------
    bool
        False (and nothing written) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    n = len(results)
    fig = Figure(figsize=(5.2 * n, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False, sharex="col",
                        gridspec_kw={"height_ratios": [2.2, 1]})
    for j, r in enumerate(results):
        r = {k: np.asarray(v, dtype=np.float64) if k.startswith("loss_") else v
             for k, v in r.items()}
        ax, ax2 = axes[0, j], axes[1, j]
        steps = np.arange(len(r["loss_dense"]))
        w = max(1, len(steps) // 50) if smooth is None else smooth
        w = max(1, min(w, len(steps)))
        kernel = np.ones(w) / w
        for key, style in (("loss_dense", dict(color="tab:blue", lw=4, alpha=0.45,
                                               label="dense nn.Linear")),
                           ("loss_factored", dict(color="black", lw=1, ls="--",
                                                  label="factored (fastsparse)"))):
            ys = np.convolve(r[key], kernel, mode="valid")
            ax.plot(steps[w - 1:], ys, **style)
        ev = np.asarray(r["eval_losses"])
        if ev.size:
            ax.plot(r["eval_steps"], ev[:, 0], "o", color="tab:orange", ms=8,
                    alpha=0.6, label="held-out, dense")
            ax.plot(r["eval_steps"], ev[:, 1], "x", color="black", ms=6,
                    label="held-out, factored")
        ax.axhline(r["heldout_unigram"], color="gray", lw=0.8, ls=":",
                   label="held-out, unigram model")
        lo = min(r["loss_dense"].min(), r["heldout_unigram"])
        if r["loss_dense"].max() > 20 * lo > 0:
            ax.set_yscale("log")
        title = r["loss"].replace("_", " ")
        if r["eps"] is not None:
            title += f" (eps = {r['eps']:g})"
        ax.set_title(title)
        ax.set_ylabel(f"mean loss per example (training: avg of {w} steps)")
        ax.legend(fontsize=8)
        pairs = [("loss_factored", "factored vs dense", "tab:red", 1.0)]
        if "loss_naive" in r:
            pairs.append(("loss_naive", "NaiveOutputLayer vs dense", "tab:green", 0.6))
        for key, label, color, alpha in pairs:
            rel = (np.abs(r[key] - r["loss_dense"])
                   / np.maximum(np.abs(r["loss_dense"]), np.finfo(float).tiny))
            nz = rel > 0          # a log scale cannot show the equal steps
            ax2.semilogy(steps[nz], rel[nz], ".", ms=2, color=color, alpha=alpha,
                         label=f"{label} ({np.count_nonzero(~nz)} of {len(rel)} "
                               f"steps equal)")
        ax2.axhline(np.finfo(np.float32).eps, color="gray", lw=0.8, ls=":",
                    label="float32 eps")
        ax2.legend(fontsize=7, markerscale=4, loc="upper left")
        ax2.set_ylabel("rel. difference of the\nper-step training loss")
        ax2.set_xlabel("SGD step")
    fig.savefig(path, dpi=80)
    return True


def environment(torch):
    """The machine and the software, as (name, value) rows of a table.

    Call it where the thread limits of the run are in effect.
    """
    import scipy
    from threadpoolctl import threadpool_info

    import fastsparse

    rows = [("platform", platform.platform()),
            ("CPUs", f"{os.cpu_count()} logical"),
            ("Python", platform.python_version()),
            ("NumPy / SciPy", f"{np.__version__} / {scipy.__version__}"),
            ("PyTorch", f"{torch.__version__}, {torch.get_num_threads()} thread(s)"),
            ("fastsparse", fastsparse.__version__)]
    for info in threadpool_info():
        rows.append((f"{info.get('user_api', '?')} library",
                     f"{info.get('internal_api', '?')} {info.get('version', '?')}, "
                     f"{info.get('num_threads', '?')} thread(s)"))
    return rows


def jsonable(x):
    """``x`` with arrays as lists and non-finite floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def report_loss(r, args, emit):
    """Print the tables of one loss."""
    steps = len(r["loss_dense"])
    tenth = max(1, steps // 10)
    ts_d, ts_f = r["time_step_dense"].sum(), r["time_step_factored"].sum()
    to_d, to_f = r["time_output_dense"].sum(), r["time_output_factored"].sum()
    emit(f"== loss: {r['loss']}"
         + (f" (eps = {r['eps']:g})" if r["eps"] is not None else "")
         + f", lr {r['lr']:g} (lower layers), {r['lr_output']:g} (output layer)")
    emit()
    rows = [
        ["training time, whole steps", format_time(ts_d), format_time(ts_f),
         f"{ts_d / ts_f:.1f}x"],
        ["  of which the output layer", format_time(to_d), format_time(to_f),
         f"{to_d / to_f:.1f}x"],
        ["  of which the rest (body, sparse embeddings)", format_time(ts_d - to_d),
         format_time(ts_f - to_f), f"{(ts_d - to_d) / (ts_f - to_f):.2f}x"],
        ["time per step, median", format_time(np.median(r["time_step_dense"])),
         format_time(np.median(r["time_step_factored"])),
         f"{np.median(r['time_step_dense']) / np.median(r['time_step_factored']):.1f}x"],
        ["output layer per step, median", format_time(np.median(r["time_output_dense"])),
         format_time(np.median(r["time_output_factored"])),
         f"{np.median(r['time_output_dense']) / np.median(r['time_output_factored']):.1f}x"],
        [f"training loss, first {tenth} steps", f"{r['loss_dense'][:tenth].mean():.6g}",
         f"{r['loss_factored'][:tenth].mean():.6g}", ""],
        [f"training loss, last {tenth} steps", f"{r['loss_dense'][-tenth:].mean():.6g}",
         f"{r['loss_factored'][-tenth:].mean():.6g}", ""],
        ["held-out loss, initial (sample)"] + [
            f"{v:.6g}" if math.isfinite(v) else "n/a (--eval-every 0)"
            for v in r["heldout_initial"]] + [""],
        ["held-out loss, final (all)", f"{r['heldout_dense']:.6g}",
         f"{r['heldout_factored']:.6g}", ""],
        ["held-out loss of the unigram model", f"{r['heldout_unigram']:.6g}", "", ""],
    ]
    if r["loss"] == "spherical_softmax":
        rows.append(["held-out perplexity (exp loss)", f"{math.exp(r['heldout_dense']):.1f}",
                     f"{math.exp(r['heldout_factored']):.1f}",
                     f"unigram {math.exp(r['heldout_unigram']):.1f}"])
    emit(format_table(["", "dense", "factored", "speed-up"], rows))
    emit()
    checks = [
        ["max rel. diff of the per-step training losses", f"{r['loss_rel_diff']:.2e}"],
        ["rel. diff of the final held-out losses", f"{r['heldout_rel_diff']:.2e}"],
        ["max rel. diff of the final output weights W / bias",
         f"{r['weights_rel_diff']:.2e} / {r['bias_rel_diff']:.2e}"],
    ]
    if "loss_naive" in r:
        checks += [
            ["naive reference vs dense: per-step training losses",
             f"{r['naive_loss_rel_diff']:.2e}"],
            ["naive reference vs dense: final held-out losses",
             f"{r['naive_heldout_rel_diff']:.2e}"],
            ["naive reference vs dense: final W / bias",
             f"{r['naive_weights_rel_diff']:.2e} / {r['naive_bias_rel_diff']:.2e}"],
        ]
    emit(format_table(["factored vs dense", ""], checks))
    emit()
    nb = r["neighbours"]
    emit(f"nearest neighbours (cosine) among the rows of the factored copy's W "
         f"(the dense copy's W gives the same lists for "
         f"{r['neighbours_same_in_dense']} of {len(nb)} words):")
    for w, lst in nb.items():
        emit(f"  {w:>12}: " + ", ".join(f"{v} {c:.2f}" for v, c in lst))
    emit()
