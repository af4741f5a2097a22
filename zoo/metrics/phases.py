"""Phase labels of the Yang et al. (2021) loss-landscape taxonomy, per model and per cell.

The taxonomy (REFERENCES.md) reads four signals:

    phase  training loss  sharpness  connectivity (mc)   CKA
    I      high           sharp      barrier (mc < 0)    -
    II     high           sharp      bump (mc > 0)       -
    III    low            flat       barrier (mc < 0)    -
    IV-A   low            flat       connected (mc ~ 0)  low
    IV-B   low            flat       connected (mc ~ 0)  high   (best test accuracy)

The papers publish no thresholds, so each signal is made discrete by an explicit rule
(``PhaseThresholds``), and a model gets the phase whose row matches its signals best: the loss
signal weighs more than the three others together, so a row of the other loss class never wins;
ties go to the earlier row. Combinations outside the table (say low loss, sharp, connected) thus
still get the closest phase, and the discrete signals are stored beside the label.

Rules (defaults and why):
- loss: ``train_loss < loss_fraction * log(n_classes)``: a fraction of the chance-level
  cross-entropy, so the rule is the same for any number of classes.
- sharpness: log10 of ``sharpness_metric`` above its ``sharp_quantile`` over the zoo's models:
  Hessian scales depend on the task and architecture, so only a relative rule transfers.
- connectivity: |mc| <= ``mc_tolerance * log(n_classes)`` is connected, else the sign of mc
  (mc < 0 barrier, > 0 bump: the reference zoo's sign convention).
- CKA: ``cka >= cka_high`` (fixed: CKA is already scale-free in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

PHASES = ("I", "II", "III", "IV-A", "IV-B")
SIGNATURES = {  # phase -> (loss, sharpness, connectivity, cka); None: any
    "I": ("high", "sharp", "barrier", None),
    "II": ("high", "sharp", "bump", None),
    "III": ("low", "flat", "barrier", None),
    "IV-A": ("low", "flat", "connected", "low"),
    "IV-B": ("low", "flat", "connected", "high"),
}
SIGNALS = ("phase.loss", "phase.sharpness", "phase.connectivity", "phase.similarity")
METRICS = {"loss": "train_loss", "mc": "connectivity.mc", "cka": "similarity.cka"}


@dataclass
class PhaseThresholds:
    loss_fraction: float = 0.25  # well trained: train loss below this fraction of log(n_classes)
    sharpness_metric: str = "hessian.trace"  # or hessian.top_eig
    sharp_quantile: float = 0.5  # sharp: log10 sharpness above this quantile of the zoo's models
    mc_tolerance: float = 0.02  # connected: |mc| <= this fraction of log(n_classes)
    cka_high: float = 0.9  # high similarity: linear CKA of logits at least this


def resolve_thresholds(models: pd.DataFrame, thresholds: PhaseThresholds | None = None,
                       n_classes: int = 10) -> dict:
    """The numbers the rules use on this zoo (JSON-serialisable, stored in zoo.json)."""
    t = thresholds or PhaseThresholds()
    chance = math.log(n_classes)
    sharp = np.nan
    if t.sharpness_metric in models:
        v = models[t.sharpness_metric].to_numpy(dtype=float)
        v = np.log10(v[np.isfinite(v) & (v > 0)])
        sharp = float(np.quantile(v, t.sharp_quantile)) if v.size else np.nan
    return {**asdict(t), "n_classes": n_classes, "chance_loss": chance, "loss_max": t.loss_fraction * chance,
            "log10_sharpness_min": None if np.isnan(sharp) else sharp, "mc_abs_max": t.mc_tolerance * chance}


def signals(frame: pd.DataFrame, resolved: dict) -> pd.DataFrame:
    """The four discrete signals of each row (NaN metric -> None)."""
    def col(name):
        return frame[name].to_numpy(dtype=float) if name in frame else np.full(len(frame), np.nan)

    loss, mc, cka = col(METRICS["loss"]), col(METRICS["mc"]), col(METRICS["cka"])
    sharp_v = col(resolved["sharpness_metric"])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sharp = np.where(sharp_v > 0, np.log10(sharp_v), np.nan)
    cut = resolved["log10_sharpness_min"]
    cut = np.nan if cut is None else cut

    def pick(ok, yes, no, value):
        return [None if not np.isfinite(v) else (yes if o else no) for o, v in zip(ok, value)]

    conn = [None if not np.isfinite(v) else "connected" if abs(v) <= resolved["mc_abs_max"]
            else "barrier" if v < 0 else "bump" for v in mc]
    return pd.DataFrame({
        "phase.loss": pick(loss < resolved["loss_max"], "low", "high", loss),
        "phase.sharpness": pick(log_sharp > cut, "sharp", "flat", log_sharp if np.isfinite(cut) else cut + log_sharp),
        "phase.connectivity": conn,
        "phase.similarity": pick(cka >= resolved["cka_high"], "high", "low", cka),
    }, index=frame.index)


def label(sig: tuple) -> str:
    """The best-matching phase of one row of signals; 'unknown' if any signal is missing."""
    if any(s is None or (isinstance(s, float) and math.isnan(s)) for s in sig):
        return "unknown"
    best, best_score = "unknown", -1
    for phase, want in SIGNATURES.items():
        score = 4 * (want[0] == sig[0]) + sum(w == s for w, s in zip(want[1:], sig[1:]) if w is not None)
        if score > best_score:
            best, best_score = phase, score
    return best


def assign_phases(models: pd.DataFrame, thresholds: PhaseThresholds | None = None,
                  n_classes: int = 10) -> pd.DataFrame:
    """Columns ``phase`` (per model), ``cell_phase`` (from the cell's median metrics) and the
    per-model signals ``phase.loss``, ``phase.sharpness``, ``phase.connectivity``, ``phase.similarity``."""
    resolved = resolve_thresholds(models, thresholds, n_classes)
    sig = signals(models, resolved)
    out = sig.copy()
    out.insert(0, "phase", [label(tuple(r)) for r in sig.itertuples(index=False)])
    metric_cols = [c for c in {*METRICS.values(), resolved["sharpness_metric"]} if c in models]
    if "cell_id" in models and metric_cols:
        cells = models.groupby("cell_id")[metric_cols].median()
        cell_sig = signals(cells, resolved)
        cell_label = {c: label(tuple(r)) for c, r in zip(cells.index, cell_sig.itertuples(index=False))}
        out.insert(1, "cell_phase", models["cell_id"].map(cell_label).fillna("unknown").to_numpy())
    else:
        out.insert(1, "cell_phase", out["phase"])
    return out


__all__ = ["PHASES", "PhaseThresholds", "assign_phases", "label", "resolve_thresholds", "signals"]
