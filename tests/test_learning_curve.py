"""benchmarks/learning_curve.py: the power-law fit, the grouping of rows, the table."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kwskit.errors import KwsError

_spec = importlib.util.spec_from_file_location(
    "learning_curve", Path(__file__).resolve().parent.parent / "benchmarks" / "learning_curve.py")
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)


def _row(frr1, frr10, acc=0.95):
    return {"val_acc": acc, "misses": {"1": {"frr": frr1}, "5": {"frr": frr1},
                                       "10": {"frr": frr10}}}


def test_power_fit_recovers_a_known_law():
    x = np.array([1000.0, 2000.0, 4000.0, 4000.0])
    c, b = lc.power_fit(x, 3.0 * x ** -0.4)
    assert c == pytest.approx(3.0, rel=1e-6) and b == pytest.approx(0.4, rel=1e-6)
    assert lc.power_fit([1000, 1000], [0.5, 0.4]) is None  # one amount of data: no slope
    assert lc.power_fit([1000, 2000], [0.5, 0.0]) is None  # log of a zero


def test_rows_group_by_share_and_the_table_averages_them():
    rows = {"a": _row(0.4, 0.2), "b": _row(0.2, 0.1), "half": _row(0.6, 0.3, 0.9)}
    by_share = lc.collect(rows, [(1.0, "a"), (0.5, "half"), (1.0, "b")])
    assert list(by_share) == [0.5, 1.0] and len(by_share[1.0]) == 2
    counts = {0.5: (10, 100), 1.0: (20, 200)}
    fits = {label: None for label, _, _ in lc.POINTS}
    md = lc.table(by_share, counts, fits, 800)
    line = [ln for ln in md.splitlines() if ln.startswith("| 20 (1)")][0]
    assert "30.0% (40.0, 20.0)" in line and "15.0% (20.0, 10.0)" in line and "| 2 |" in line
    assert "keyword-free" in md and md.count("| - ") >= len(lc.POINTS)  # no fit, no column
    with pytest.raises(KwsError, match="no row 'missing'"):
        lc.collect(rows, [(1.0, "missing")])
