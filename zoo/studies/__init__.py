"""Downstream studies over a published zoo, by phase: `zoo study NAME DIR [--set study.key=value ...]`.

Each study is one file holding a ``STUDY = Study(...)`` record (``base.Study``: options with
defaults and types, what a row is, ``run(zoo, options) -> DataFrame``, a plot) and one line in
``STUDIES`` below. ``runner.run_study`` publishes the result into the zoo: ``studies/NAME.parquet``
with phase and cell columns, ``plots/study-NAME.png``, a dataset-card entry, zoo.json hashes.
"""

from __future__ import annotations

from . import ensemble, finetune, merge, prune, shift
from .base import Option, Study

STUDIES: dict[str, Study] = {
    "ensemble": ensemble.STUDY,
    "merge": merge.STUDY,
    "prune": prune.STUDY,
    "finetune": finetune.STUDY,
    "shift": shift.STUDY,
}

__all__ = ["STUDIES", "Option", "Study"]
