"""Percentiles, the two ways this project reads them.

``percentile`` interpolates (numpy's default method), so eval figures move
smoothly as latencies change; ``nearest_rank`` returns a value that was really
observed, as a load report should (a p95 of 2 requests is the slower one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty sequence.

    >>> percentile([4.0, 1.0, 3.0, 2.0], 50)
    2.5
    >>> percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95)
    4.8
    """
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    # Rounded so that float noise (4.800000000000001) does not reach the reports.
    return round(s[lo] + (s[hi] - s[lo]) * (pos - lo), 9)


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of the values at or below it.

    >>> nearest_rank([4, 1, 3, 2], 50), nearest_rank([4, 1, 3, 2], 95), nearest_rank([7], 95)
    (2, 4, 7)
    >>> nearest_rank([], 50) is None
    True
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]
