"""Helpers for scripts that drive the layers: timing, tables, progress.

The ``fastsparse demo`` command uses them, and so do the benchmarks and the
examples beside the package (which depend on this public module, not on
the demo).  Nothing here touches a layer.
"""
import contextlib
import math
import sys
import time

import numpy as np

__all__ = ["ProgressBar", "format_clock", "format_table", "format_time",
           "max_rel_diff", "status"]


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

