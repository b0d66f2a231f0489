"""The ``fastsparse demo`` command, and helpers shared with ``bench/``.

The demo trains a :class:`~fastsparse.FactoredOutputLayer` and a
:class:`~fastsparse.NaiveOutputLayer` that start from the same weights side
by side on the same synthetic minibatches, times each layer's ``step``
separately and checks that both give the same losses and final weights.

The helpers (synthetic data, progress bar, status lines, time formatting,
tables, environment description) are also used by ``bench/bench_step.py``.
"""
import contextlib
import math
import os
import platform
import subprocess
import sys
import textwrap
import time

import numpy as np

__all__ = ["ProgressBar", "ZipfTargets", "default_lr", "environment_lines",
           "format_clock", "format_table", "format_time", "git_revision",
           "max_rel_diff", "random_hidden", "run_demo", "status"]

#: Default learning rate for ||h|| = 1 in online mode: every example scales W
#: along h by r = 1 - 2 lr ||h||^2 = 0.8, far from the refused |r| < 1e-3.
DEFAULT_LR = 0.02


# --------------------------------------------------------------- formatting
def format_time(seconds):
    """A duration with a readable unit and 4 significant digits.

    Parameters
    ----------
    seconds : float

    Returns
    -------
    str
        For example ``"61.2 us"``, ``"12.35 ms"`` or ``"3.201 s"``.
    """
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:#.4g} {unit}"
    return f"{seconds * 1e9:#.4g} ns"


def format_clock(seconds):
    """A duration as ``m:ss`` (or ``h:mm:ss``), for elapsed times and ETAs.

    Parameters
    ----------
    seconds : float

    Returns
    -------
    str
    """
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def format_table(headers, rows, align=None):
    """Lay out a plain-text table.

    Parameters
    ----------
    headers : sequence of str
    rows : sequence of sequence of object
        Cells are converted with ``str``.
    align : str, optional
        One character per column, ``"<"`` (left) or ``">"`` (right).
        Default: first column left, the others right.

    Returns
    -------
    str
        The table, header and rule included, without a trailing newline.
    """
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    ncol = len(headers)
    if align is None:
        align = "<" + ">" * (ncol - 1)
    widths = [max(len(r[j]) for r in cells) for j in range(ncol)]

    def line(r):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


# ------------------------------------------------------- progress and status
class ProgressBar:
    """A one-line text progress bar, redrawn in place with ``\\r``.

    Shows the count done, the elapsed time and an estimate of the time left.
    Redraws are throttled so that the bar costs nothing measurable.

    Parameters
    ----------
    total : int
        Number of units (steps, repeats) to do.
    label : str
        Text in front of the bar.
    unit : str, default "steps"
    stream : file-like, optional
        Default ``sys.stderr`` (looked up when the bar is created).
    width : int, default 30
        Width of the bar in characters.
    min_interval : float, default 0.1
        Minimum number of seconds between two redraws.

    Examples
    --------
    >>> bar = ProgressBar(100, "training")      # doctest: +SKIP
    >>> for i in range(100):                    # doctest: +SKIP
    ...     work(); bar.update()
    >>> bar.close()                             # doctest: +SKIP
    """

    def __init__(self, total, label, *, unit="steps", stream=None, width=30,
                 min_interval=0.1):
        self.total = max(0, int(total))
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        # redrawing in place only makes sense on a terminal: elsewhere (a
        # log file, a pipe) the bar prints one line when it is done
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.min_interval = min_interval
        self.done = 0
        self._start = time.perf_counter()
        self._last_draw = -math.inf
        self._last_len = 0
        self._drawn = None
        if self.live:
            self._draw()

    @property
    def elapsed(self):
        """Seconds since the bar was created."""
        return time.perf_counter() - self._start

    def update(self, n=1):
        """Record ``n`` more units done and redraw if it is time to."""
        self.done = min(self.total, self.done + n)
        if self.live and (self.done == self.total
                          or time.perf_counter() - self._last_draw >= self.min_interval):
            self._draw()

    def close(self):
        """Draw the final state (if not shown yet) and end the line."""
        if self._drawn != self.done:
            self._draw()
        self.stream.write("\n")
        self.stream.flush()
        self._last_len = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _draw(self):
        elapsed = self.elapsed
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        if self.done >= self.total:
            eta = "done"
        elif self.done:
            eta = "ETA " + format_clock(elapsed / self.done * (self.total - self.done))
        else:
            eta = "ETA ?"
        text = (f"{self.label} [{bar}] {self.done}/{self.total} {self.unit}"
                f"  elapsed {format_clock(elapsed)}  {eta}")
        pad = " " * max(0, self._last_len - len(text))
        self.stream.write(("\r" if self.live else "") + text + pad)
        self.stream.flush()
        self._last_len = len(text)
        self._last_draw = time.perf_counter()
        self._drawn = self.done


@contextlib.contextmanager
def status(message, stream=None):
    """Print ``message ...`` before a slow phase and its duration after it.

    Parameters
    ----------
    message : str
    stream : file-like, optional
        Default ``sys.stderr``.

    Yields
    ------
    None
    """
    stream = sys.stderr if stream is None else stream
    stream.write(f"{message} ...")
    stream.flush()
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        stream.write(" failed\n")
        stream.flush()
        raise
    stream.write(f" done in {format_time(time.perf_counter() - start)}\n")
    stream.flush()


# ------------------------------------------------------------ synthetic data
def random_hidden(rng, m, n_hidden, dtype):
    """Random hidden vectors of unit norm, uniformly distributed in direction.

    Parameters
    ----------
    rng : numpy.random.Generator
    m, n_hidden : int
    dtype : numpy dtype

    Returns
    -------
    ndarray of shape (m, n_hidden)
        Normal vectors scaled to ``||h|| = 1``, so that an SGD step with
        learning rate ``lr`` has ``r = 1 - 2 lr`` exactly.
    """
    H = rng.standard_normal((m, n_hidden))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    return H.astype(dtype)


class ZipfTargets:
    """Zipf-distributed target indices, as word frequencies in a vocabulary.

    Index ``i`` (0-based rank) is drawn with probability proportional to
    ``1 / (i + 1)**exponent``.

    Parameters
    ----------
    n_outputs : int
        D, the number of possible targets.
    exponent : float, default 1.0
    """

    def __init__(self, n_outputs, exponent=1.0):
        self.n_outputs = int(n_outputs)
        self.exponent = float(exponent)
        weights = np.arange(1, self.n_outputs + 1, dtype=np.float64) ** -self.exponent
        self._cdf = np.cumsum(weights)

    def sample(self, rng, m, k=1):
        """Draw targets in a format that the layers' ``step`` accepts.

        Parameters
        ----------
        rng : numpy.random.Generator
        m : int
            Number of examples.
        k : int, default 1
            Targets per example (drawn independently; a repeated index in
            one example is summed by the layers).

        Returns
        -------
        ndarray of shape (m,) or tuple
            An int64 index array when ``k == 1``, else ``(indices, None)``
            with indices of shape (m, k) (``None``: all target values 1).
        """
        u = rng.random((m, k)) * self._cdf[-1]
        idx = np.searchsorted(self._cdf, u, side="right")
        np.minimum(idx, self.n_outputs - 1, out=idx)
        return idx[:, 0].copy() if k == 1 else (idx, None)


def default_lr(batch_size, n_hidden, mode):
    """A learning rate that keeps training stable for unit-norm ``h``.

    Online, every example scales W along its h by ``r = 1 - 2 lr``.  A
    minibatch step (sum of the gradients) scales W by ``I - 2 lr H^T H``;
    the largest eigenvalue of ``H H^T`` is about ``(1 + sqrt(m / d))**2`` for
    random unit rows, so lr is lowered to keep ``2 lr lambda_max <= 0.1``
    (a step of SGD on the mean loss of the order of 0.1 / m per example).

    Parameters
    ----------
    batch_size : int
    n_hidden : int
    mode : {"online", "batch"}

    Returns
    -------
    float
    """
    if mode == "online" or batch_size == 1:
        return DEFAULT_LR
    lam_max = (1.0 + math.sqrt(batch_size / n_hidden)) ** 2
    return min(DEFAULT_LR, 0.05 / lam_max)


# ------------------------------------------------------------- measurements
def max_rel_diff(a, b, chunk_elements=1 << 20):
    """``max|a - b| / max|b|`` over two arrays of the same shape.

    Computed in float64 over chunks of rows, reusing two small buffers (no
    full-size temporary).

    Parameters
    ----------
    a, b : array_like
    chunk_elements : int, optional
        Approximate number of elements per chunk.

    Returns
    -------
    float
        ``max|a - b|`` when ``b`` is all zeros.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    a = a.reshape(a.shape[0] if a.ndim else 1, -1)
    b = b.reshape(a.shape)
    rows = max(1, chunk_elements // max(1, a.shape[1]))
    buf_a = np.empty((min(rows, a.shape[0]), a.shape[1]))
    buf_b = np.empty_like(buf_a)
    diff = scale = 0.0
    for start in range(0, a.shape[0], rows):
        n = min(rows, a.shape[0] - start)
        ac, bc = buf_a[:n], buf_b[:n]
        ac[...] = a[start:start + n]
        bc[...] = b[start:start + n]
        np.abs(bc, out=bc)
        scale = max(scale, float(np.max(bc, initial=0.0)))
        bc[...] = b[start:start + n]
        np.subtract(ac, bc, out=ac)
        np.abs(ac, out=ac)
        diff = max(diff, float(np.max(ac, initial=0.0)))
    return diff / scale if scale else diff


# -------------------------------------------------------------- environment
def git_revision(path=None):
    """The git commit of the checkout holding ``path``, if there is one.

    Parameters
    ----------
    path : str, optional
        A directory inside the checkout; default: this package's directory.

    Returns
    -------
    str or None
        ``git rev-parse HEAD``, followed by ``" (with uncommitted changes)"``
        when the working tree differs from it; None outside a git checkout
        or without git.
    """
    path = os.path.dirname(os.path.abspath(__file__)) if path is None else path
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=path, check=True, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + (" (with uncommitted changes)" if dirty else "")


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one).

    Returns
    -------
    str
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_lines():
    """A description of the machine and the software, one item per line.

    Call it where the BLAS thread limits of the measurement are in effect,
    so that the thread counts shown are the ones used.

    Returns
    -------
    list of (str, str)
        (name, value) pairs: platform, CPUs, Python, NumPy, SciPy,
        fastsparse version, git revision and the BLAS libraries loaded
        (from ``threadpoolctl.threadpool_info()``).
    """
    import scipy
    from threadpoolctl import threadpool_info

    from . import __version__

    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    lines = [
        ("platform", platform.platform()),
        ("CPU", f"{cpu}, {os.cpu_count()} logical CPUs ({usable} usable)"),
        ("Python", platform.python_version()),
        ("NumPy / SciPy", f"{np.__version__} / {scipy.__version__}"),
        ("fastsparse", __version__),
        ("git revision", git_revision() or "unknown (not a git checkout)"),
    ]
    for info in threadpool_info():
        lines.append((
            f"{info.get('user_api', '?')} library",
            f"{info.get('internal_api', '?')} {info.get('version', '?')} "
            f"({info.get('architecture', '?')}, {info.get('threading_layer', '?')}), "
            f"{info.get('num_threads', '?')} thread(s), "
            f"{os.path.basename(info.get('filepath', '?'))}"))
    return lines


# --------------------------------------------------------------------- demo
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
