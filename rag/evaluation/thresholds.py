"""A floor or a ceiling per figure, and the check that a run meets them.

One checker for ``eval/thresholds.json`` (``rag eval``) and ``eval/bench_targets.json`` (``rag bench --check``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import InputError
from rag.evaluation.metrics import KNOWN_METRICS, RETRIEVAL_METRICS


@dataclass(frozen=True)
class Thresholds:
    """Minimums for figures where higher is better, maximums for rates and latencies."""

    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)


def load_thresholds(path: Path, known: Sequence[str] | None = KNOWN_METRICS) -> Thresholds:
    """Read ``{"min": {metric: value}, "max": {metric: value}}``; keys starting with "_" are comments.

    ``known`` lists the figures a bound may name (None: any name, as for the bench targets).
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"Cannot read the thresholds file {path}: {exc.strerror or exc}.") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    if not isinstance(raw, dict):
        raise InputError(f'{path} must be a JSON object like {{"min": {{...}}, "max": {{...}}}}.')
    parts: dict[str, dict[str, float]] = {"min": {}, "max": {}}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key not in parts or not isinstance(value, dict):
            raise InputError(f'{path}: unexpected key {key!r}; use "min" and "max" objects of metric -> number.')
        for name, bound in value.items():
            if known is not None and name not in known:
                raise InputError(f"{path}: unknown metric {name!r} in {key!r}; known: {', '.join(known)}.")
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise InputError(f"{path}: {key}.{name} must be a number, got {bound!r}.")
            parts[key][name] = float(bound)
    return Thresholds(min=parts["min"], max=parts["max"])


def check_thresholds(
    metrics: Mapping[str, Any], thresholds: Thresholds, *, retrieval_only: bool = False
) -> tuple[list[str], list[str]]:
    """Return (failures, unchecked) as human-readable lines.

    A figure that was not measured (None, e.g. no TTFT timings) cannot fail; it is listed as unchecked.

    >>> check_thresholds({"mrr": 0.5, "latency_p95_s": 3.0}, Thresholds({"mrr": 0.6}, {"latency_p95_s": 5}))
    (['mrr = 0.500 is below the minimum 0.600'], [])
    """
    failures: list[str] = []
    unchecked: list[str] = []
    for kind, bounds in (("min", thresholds.min), ("max", thresholds.max)):
        for name, bound in bounds.items():
            if retrieval_only and name not in RETRIEVAL_METRICS:
                continue
            value = metrics.get(name)
            if value is None:
                unchecked.append(f"{name}: not measured (threshold {kind} {bound:g})")
            elif math.isnan(value):  # measured, but nothing to measure it on: a miss, not a pass
                failures.append(f"{name} is not a number (threshold {kind} {bound:g})")
            elif kind == "min" and value < bound:
                failures.append(f"{name} = {value:.3f} is below the minimum {bound:.3f}")
            elif kind == "max" and value > bound:
                failures.append(f"{name} = {value:.3f} is above the maximum {bound:.3f}")
    return failures, unchecked
