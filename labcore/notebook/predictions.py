"""Structured predictions: a number you expect to measure, written before the run, with a confidence.

A claim's free-text ``prediction`` says what you expect in words; ``predictions=(...)`` says it so
that the lab can score it::

    predictions=(Prediction("entropy_mae_bits", "<=", 0.03, confidence=0.7),
                 Prediction("final_loss", "in", (0.1, 0.4), confidence=0.5)),

``measured_key`` names a value the test records with ``lab.record(...)`` (a list entry or a dict
member is written ``key[0]`` / ``key.sub``, as in the calibration tables); ``comparator`` is one of
``<= >= < > in`` (``in``: a closed interval ``(lo, hi)``); ``confidence`` is the probability you
give the prediction of coming true (0–1). After a run each prediction is a **hit**, a **miss**, or
**unscorable** (no test recorded the key). ``lab scoreboard`` (``labcore.notebook.scoreboard``)
adds them up: hits per paper, Brier score, reliability, surprises, and predictions edited after
the result.

This module imports no other notebook module at import time: ``claims`` imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NoReturn

#: How a measured value is compared with the predicted value.
COMPARATORS: tuple[str, ...] = ("<=", ">=", "<", ">", "in")

HIT, MISS, UNSCORABLE = "hit", "miss", "unscorable"


def _fail(message: str) -> NoReturn:
    from labcore.notebook.claims import ClaimError  # claims imports this module

    raise ClaimError(message)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Prediction:
    """One scored prediction: ``measured[measured_key] <comparator> value``, believed with
    probability ``confidence``."""

    measured_key: str
    comparator: str
    value: float | tuple[float, float]
    confidence: float

    def __post_init__(self) -> None:
        key = self.measured_key
        if not isinstance(key, str) or not key.strip():
            _fail(f"prediction: measured_key {key!r} must name a value the test records, e.g. 'rel_err'")
        owner = f"prediction {key!r}"
        if self.comparator not in COMPARATORS:
            _fail(f"{owner}: comparator {self.comparator!r} is unknown; use one of {', '.join(COMPARATORS)}")
        if self.comparator == "in":
            interval = self.value
            if (isinstance(interval, str) or not isinstance(interval, (tuple, list)) or len(interval) != 2
                    or not all(_is_number(v) for v in interval) or interval[0] > interval[1]):
                _fail(f"{owner}: 'in' needs an interval (lo, hi) of two numbers with lo <= hi, not {interval!r}")
            object.__setattr__(self, "value", (float(interval[0]), float(interval[1])))
        elif not _is_number(self.value):
            _fail(f"{owner}: value {self.value!r} must be a finite number for {self.comparator!r}")
        if not _is_number(self.confidence) or not 0.0 <= self.confidence <= 1.0:
            _fail(f"{owner}: confidence {self.confidence!r} must be a probability between 0 and 1, e.g. 0.7")

    def to_dict(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"measured_key": self.measured_key, "comparator": self.comparator, "value": value,
                "confidence": self.confidence}


def describe(prediction: dict[str, Any]) -> str:
    """``entropy_mae_bits <= 0.03 (70%)`` for a prediction as stored in a record."""
    value = prediction.get("value")
    if isinstance(value, list) and len(value) == 2:
        shown = f"[{value[0]:g}, {value[1]:g}]"
    else:
        shown = f"{value:g}" if _is_number(value) else str(value)
    confidence = prediction.get("confidence")
    percent = f" ({confidence:.0%})" if _is_number(confidence) else ""
    return f"{prediction.get('measured_key')} {prediction.get('comparator')} {shown}{percent}"


def _as_float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value in ("nan", "inf", "-inf"):  # how the history stores non-finite floats
        return float(str(value))
    return None


def lookup(measured: dict[str, Any], key: str) -> float | None:
    """The numeric value of ``key`` in a record's ``measured`` (``a[0]``, ``a.b`` reach into lists
    and dicts), or None when it is absent or not a number."""
    if key in measured:
        return _as_float(measured[key])
    current: Any = measured
    token = ""
    parts: list[str | int] = []
    for char in key + ".":
        if char in ".[]":
            if token:
                parts.append(int(token) if char == "]" and token.isdigit() else token)
            token = ""
        else:
            token += char
    for part in parts:
        if isinstance(part, int) and isinstance(current, list) and part < len(current):
            current = current[part]
        elif isinstance(part, str) and isinstance(current, dict) and part in current:
            current = current[part]
        else:
            return None
    return _as_float(current)


def holds(prediction: dict[str, Any], measured_value: float) -> bool:
    """Does the measured value satisfy the prediction? (NaN satisfies nothing.)"""
    comparator, value = prediction.get("comparator"), prediction.get("value")
    if comparator == "in":
        low, high = value  # type: ignore[misc]
        return bool(low <= measured_value <= high)
    checks = {"<=": measured_value <= value, ">=": measured_value >= value,  # type: ignore[operator]
              "<": measured_value < value, ">": measured_value > value}  # type: ignore[operator]
    return bool(checks.get(str(comparator), False))


def score(prediction: dict[str, Any], measured_dicts: list[dict[str, Any]]) -> tuple[str, list[float]]:
    """Score one prediction against the measured values of a claim's latest tests: ``hit`` when
    every test that recorded the key satisfies it, ``miss`` when one does not, ``unscorable`` when
    no test recorded it. Returns the outcome and the values it was scored on."""
    key = str(prediction.get("measured_key"))
    values = [v for v in (lookup(m or {}, key) for m in measured_dicts) if v is not None]
    if not values:
        return UNSCORABLE, []
    return (HIT if all(holds(prediction, v) for v in values) else MISS), values
