"""fastsparse.utils: the helpers of the demo, the benchmarks and the
examples."""
import io

import numpy as np
import pytest

from fastsparse.utils import (ProgressBar, format_clock, format_table, format_time,
                              max_rel_diff, status)


def test_format_time_and_clock():
    assert format_time(3.2014) == "3.201 s"
    assert format_time(0.012345) == "12.35 ms"
    assert format_time(61.2e-6) == "61.20 us"
    assert format_time(5e-9) == "5.000 ns"
    assert format_clock(59.6) == "1:00" and format_clock(3725) == "1:02:05"


def test_format_table():
    t = format_table(["a", "bb"], [["x", 1], ["yyy", 22]])
    assert t.split("\n") == ["a    bb", "---  --", "x     1", "yyy  22"]


def test_max_rel_diff_is_chunked_and_exact():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((300, 7)).astype(np.float32)
    a = b.copy()
    a[123, 4] += 0.5
    expected = 0.5 / np.abs(b).max()
    assert max_rel_diff(a, b, chunk_elements=10) == pytest.approx(expected, rel=1e-6)
    assert max_rel_diff(a, b) == max_rel_diff(a, b, chunk_elements=10)
    assert max_rel_diff(np.ones(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        max_rel_diff(np.ones(3), np.ones(4))


def test_progress_bar_and_status_to_a_file():
    out = io.StringIO()
    with ProgressBar(3, "work", stream=out) as bar:
        for _ in range(3):
            bar.update()
    assert out.getvalue().startswith("work [") and "3/3 steps" in out.getvalue()
    out = io.StringIO()
    with status("phase", out):
        pass
    assert out.getvalue().startswith("phase ... done in ")
    out = io.StringIO()
    with pytest.raises(KeyError):
        with status("phase", out):
            raise KeyError
    assert out.getvalue() == "phase ... failed\n"
