"""Statistics over several fields of view of one sample, as ASTM E2109 asks of area-percent porosity.

One micrograph field says little about a coating; the standard reports the mean over n fields,
the sample standard deviation and the 95 % confidence interval half-width
`t(0.975, n-1) * sd / sqrt(n)` (Student's t, from `scipy.stats.t`, which scikit-image already
pulls in), and the relative accuracy `%RA = CI / mean * 100`.

Example:
    >>> stats = summarize_fields([{"porosity_pct": v} for v in (1.0, 2.0, 3.0, 4.0, 5.0)],
    ...                          names=("porosity_pct",))
    >>> round(stats["porosity_pct"].ci95_half_width, 3)
    1.963
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from scipy import stats as scipy_stats

from inspectd.metric_values import finite_or_none

logger = logging.getLogger(__name__)

FRACTION_METRICS = ("melted_fraction_pct", "unmelted_fraction_pct", "porosity_pct")


@dataclass(frozen=True)
class FieldStat:
    """Mean, spread and 95 % confidence interval of one metric over n fields.

    With n = 1 the spread is unknown: `sd` is 0.0 and every confidence figure is None.
    With n = 0 (the metric was missing or non-finite in every field) all figures are None.
    """

    name: str
    n: int
    mean: float | None
    sd: float | None
    ci95_half_width: float | None
    ci95_low: float | None
    ci95_high: float | None
    relative_accuracy_pct: float | None

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON-friendly mapping (no NaN: unknown figures are None)."""
        return asdict(self)


def summarize_fields(
    metrics_per_field: Sequence[Mapping[str, float]],
    names: Sequence[str] = FRACTION_METRICS,
) -> dict[str, FieldStat]:
    """Summarise each metric in `names` over the fields' metric maps.

    A field whose value for a name is missing or non-finite is left out of that name's
    statistics (its `n` is smaller); the daemon only passes fields that were analysed.

    Example:
        >>> fields = [{"porosity_pct": 2.0}, {"porosity_pct": 4.0}]
        >>> s = summarize_fields(fields, names=("porosity_pct",))["porosity_pct"]
        >>> (s.n, s.mean, round(s.sd, 4), round(s.ci95_half_width, 3))
        (2, 3.0, 1.4142, 12.706)
    """
    if not metrics_per_field:
        msg = "summarize_fields needs at least one field"
        raise ValueError(msg)
    return {name: _summarize_one(name, _values(metrics_per_field, name)) for name in names}


def _values(metrics_per_field: Sequence[Mapping[str, float]], name: str) -> list[float]:
    values = []
    for index, metrics in enumerate(metrics_per_field):
        raw = metrics.get(name)
        value = finite_or_none(raw)
        if value is not None:
            values.append(value)
        else:
            logger.debug("field %d has no finite %s; left out of its statistics", index, name)
    return values


def _summarize_one(name: str, values: list[float]) -> FieldStat:
    n = len(values)
    if n == 0:
        return FieldStat(name, 0, None, None, None, None, None, None)
    mean = math.fsum(values) / n
    if n == 1:
        return FieldStat(name, 1, mean, 0.0, None, None, None, None)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    relative_accuracy = half_width / mean * 100.0 if mean != 0.0 else None
    return FieldStat(name, n, mean, sd, half_width, mean - half_width, mean + half_width, relative_accuracy)
