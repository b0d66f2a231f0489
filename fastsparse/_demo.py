"""The ``fastsparse demo`` command.

The demo trains a :class:`~fastsparse.FactoredOutputLayer` and a
:class:`~fastsparse.NaiveOutputLayer` that start from the same weights side
by side on the same synthetic minibatches, times each layer's ``step``
separately and checks that both give the same losses and final weights.
"""
import sys
import textwrap
import time

import numpy as np

from .datasets import ZipfTargets, default_lr, random_hidden
from .utils import ProgressBar, format_table, format_time, max_rel_diff, status

__all__ = ["run_demo"]


def run_demo(n_outputs=200_000, n_hidden=256, steps=40, batch_size=64,
             mode="batch", dtype="float32", lr=None, seed=0, threads=1,
             stream=None, progress_stream=None):
    """Train the factored and the naive layer side by side and compare them.

    Both layers start from the same random weights (same ``seed``) and take
    the same minibatches: unit-norm random ``h`` and one Zipf-distributed
    target per example.  Only the ``step`` calls are timed, each layer's
    separately.

    Parameters
    ----------
    n_outputs, n_hidden : int
        D and d.
    steps : int
        Number of minibatches.
    batch_size : int
        Examples per ``step`` call (m).
    mode : {"online", "batch"}
        Passed to ``step``.
    dtype : {"float32", "float64"}
    lr : float, optional
        Default :func:`default_lr` for this batch size and mode.
    seed : int, optional
        Seed of the initial weights; the data use a stream derived from it.
    threads : int, default 1
        BLAS threads (``threadpoolctl.threadpool_limits``).
    stream : file-like, optional
        Where the report goes, default ``sys.stdout``.
    progress_stream : file-like, optional
        Where the progress bar and status lines go, default ``sys.stderr``.

    Returns
    -------
    dict
        The measured numbers: ``time_factored``, ``time_naive`` (seconds per
        step, arrays of length ``steps``), ``loss_factored``, ``loss_naive``
        (summed loss per step), ``speedup``, ``speedup_theory``,
        ``loss_rel_diff``, ``weights_rel_diff``, ``exact`` (the verdict),
        ``lr``.

    Raises
    ------
    ValueError
        If a step is refused (learning rate too large for the data).
    """
    from threadpoolctl import threadpool_limits

    from . import FactoredOutputLayer, NaiveOutputLayer

    out = sys.stdout if stream is None else stream
    err = sys.stderr if progress_stream is None else progress_stream
    dtype = np.dtype(dtype)
    if lr is None:
        lr = default_lr(batch_size, n_hidden, mode)
    D, d, m = n_outputs, n_hidden, batch_size

    def emit(text=""):
        out.write(text + "\n")
        out.flush()

    with threadpool_limits(limits=threads):
        emit("fastsparse demo: exact factored vs naive output layer "
             "(Vincent et al., NIPS 2015)")
        emit()
        config = [
            ("outputs D", f"{D:,}"),
            ("hidden d", f"{d}"),
            ("steps", f"{steps}"),
            ("batch size m", f"{m} per step, mode={mode!r}"),
            ("examples", f"{steps * m:,}"),
            ("dtype", dtype.name),
            ("learning rate", f"{lr:g} (online r = 1 - 2 lr ||h||^2 = {1 - 2 * lr:g})"),
            ("seed", f"{seed}"),
            ("BLAS threads", f"{threads}"),
            ("data", "unit-norm random h, K=1 target per example, Zipf(1) over D"),
            ("memory", f"about {_demo_memory(D, d, m, dtype) / 2**20:,.0f} MiB"),
        ]
        emit(format_table(["configuration", ""], config, "<<"))
        emit()

        with status("building the factored layer (random W, O(D d^2) Gram "
                    "matrix W^T W)", err):
            factored = FactoredOutputLayer(D, d, dtype=dtype, seed=seed)
        with status("building the naive layer (same random W)", err):
            naive = NaiveOutputLayer(D, d, dtype=dtype, seed=seed)

        data_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        zipf = ZipfTargets(D)
        t_fac = np.empty(steps)
        t_nai = np.empty(steps)
        loss_fac = np.empty(steps)
        loss_nai = np.empty(steps)
        with ProgressBar(steps, "training both layers", stream=err) as bar:
            for s in range(steps):
                H = random_hidden(data_rng, m, d, dtype)
                targets = zipf.sample(data_rng, m)
                t0 = time.perf_counter()
                lf, _ = factored.step(H, targets, lr, mode=mode)
                t1 = time.perf_counter()
                ln, _ = naive.step(H, targets, lr, mode=mode)
                t2 = time.perf_counter()
                t_fac[s], t_nai[s] = t1 - t0, t2 - t1
                loss_fac[s] = lf.sum(dtype=np.float64)
                loss_nai[s] = ln.sum(dtype=np.float64)
                bar.update()

        with status("comparing the final weights (factored.weights() is "
                    "O(D d^2))", err):
            weights_rel_diff = max_rel_diff(factored.weights(), naive.weights())

    loss_rel_diff = float(np.max(np.abs(loss_fac - loss_nai)
                                 / np.maximum(np.abs(loss_nai), np.finfo(float).tiny)))
    speedup = t_nai.sum() / t_fac.sum()
    theory = D / (4 * d)
    # the verdict: agreement to the dtype's rounding, with room for its
    # accumulation over the run (100 eps: 1.2e-5 in float32)
    bound = 100 * float(np.finfo(dtype).eps)
    exact = loss_rel_diff <= bound and weights_rel_diff <= bound
    how = (f"minibatches of {m}" if mode == "batch" else
           f"online, calls of {m} example{'s' if m > 1 else ''}")
    emit(f"speed-up of the factored layer over the dense one: {speedup:,.0f}x "
         f"({how}; the paper's D/4d = {theory:,.0f}x)")
    emit(f"agrees with the dense layer to {dtype.name} rounding: "
         f"{'yes' if exact else 'NO'} (losses and final weights within "
         f"{bound:.1e} relative, i.e. 100 {dtype.name} eps)")
    emit()
    tenth = max(1, steps // 10)
    plural = "steps" if tenth > 1 else "step"

    def timing(label, f):
        return [label, format_time(f(t_fac)), format_time(f(t_nai))]

    def losses(label, a, b):
        return [label, f"{a:.4f}", f"{b:.4f}"]

    rows = [
        timing("time per step, mean", np.mean),
        timing("time per step, median", np.median),
        ["time per example, mean", format_time(t_fac.mean() / m),
         format_time(t_nai.mean() / m)],
        timing("total step time", np.sum),
        losses("summed loss, first step", loss_fac[0], loss_nai[0]),
        losses("summed loss, last step", loss_fac[-1], loss_nai[-1]),
        losses(f"mean loss, first {tenth} {plural}", loss_fac[:tenth].mean(),
               loss_nai[:tenth].mean()),
        losses(f"mean loss, last {tenth} {plural}", loss_fac[-tenth:].mean(),
               loss_nai[-tenth:].mean()),
    ]
    emit(format_table(["summary", "factored", "naive"], rows))
    emit()
    checks = [
        ["max rel. diff of per-step losses", f"{loss_rel_diff:.2e}"],
        ["max rel. diff of final weights", f"{weights_rel_diff:.2e}"],
    ]
    emit(format_table(["comparison", ""], checks))
    emit()
    notes = [f"Relative differences: max|factored - naive| / max|naive| (each "
             f"step's summed loss; all weights), both layers in {dtype.name}."]
    if m == 1:
        notes.append("At one example per call the factored time is dominated by "
                     "the fixed cost of a call (input validation); a training "
                     "pipeline hands over minibatches (the default).")
    if threads > 1:
        notes.append("With several BLAS threads the factored step's small d x d "
                     "BLAS calls can cost more in thread wake-ups than they "
                     "gain; compare with --threads 1.")
    for note in notes:
        emit(textwrap.fill(note, width=79))
    return {
        "time_factored": t_fac, "time_naive": t_nai,
        "loss_factored": loss_fac, "loss_naive": loss_nai,
        "speedup": speedup, "speedup_theory": theory,
        "loss_rel_diff": loss_rel_diff, "weights_rel_diff": weights_rel_diff,
        "exact": exact, "lr": lr,
    }


def _demo_memory(D, d, m, dtype):
    """Rough peak memory of the demo in bytes: V, W and the two weight copies
    of the final comparison, plus the naive batch step's (m, D) outputs."""
    item = np.dtype(dtype).itemsize
    return (4 * D * d + m * D) * item
