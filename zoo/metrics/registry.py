"""The registered metrics, in measuring order: one line per metric file (``zoo/metrics/base.py``
says what a file declares). The measure step, ``zoo metrics NAME``, the ``[metrics]`` options,
the dataset card's columns and README's metrics table (``python -m zoo.datasets.card``) are all
derived from this list."""

from __future__ import annotations

from . import connectivity, hessian, lmc, nuclear, sae_match, sensitivity, similarity, spectral
from .base import Metric, Option

METRICS: dict[str, Metric] = {m.name: m for m in (
    hessian.METRIC,
    spectral.METRIC,
    connectivity.METRIC,
    similarity.METRIC,
    lmc.METRIC,
    nuclear.METRIC,
    sensitivity.METRIC,
    sae_match.METRIC,
)}

OPTIONS: dict[str, Option] = {k: o for m in METRICS.values() for k, o in m.options.items()}
GROUPS: dict[str, list[str]] = {}  # `zoo metrics GROUP`: e.g. landscape = hessian, connectivity, cka
for _m in METRICS.values():
    if _m.group:
        GROUPS.setdefault(_m.group, []).append(_m.name)



__all__ = ["GROUPS", "METRICS", "OPTIONS"]
