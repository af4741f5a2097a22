"""The registered metrics, in measuring order: one line per metric file (``zoo/metrics/base.py``
says what a file declares). The measure step, ``zoo metrics NAME``, the ``[metrics]`` options
and the dataset card's column table are all derived from this list."""

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



def markdown_table() -> str:
    """README's metrics table, one row per registered metric (``python -m zoo.metrics.registry``
    prints it; a test keeps README equal to it)."""
    from ..spec import MetricsSpec

    default = MetricsSpec()
    rows = ["| metric (`zoo metrics NAME`) | file | what | switch | protocol |", "| --- | --- | --- | --- | --- |"]
    for m in METRICS.values():
        where = m.compute.__module__.removeprefix("zoo.metrics.") + ".py"
        switch = f"`metrics.{m.field}`" + ("" if m.enabled(default) else " (off by default)")
        rows.append(f"| {m.name} | `{where}` | {m.about} | {switch} | {m.protocol} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

__all__ = ["GROUPS", "METRICS", "OPTIONS", "markdown_table"]
