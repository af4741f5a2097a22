"""The dataset card (README.md of a published zoo): what every file and column means."""

from __future__ import annotations

import pandas as pd

from ..metrics.coverage import coverage_lines, phase_coverage
from ..spec import ZooSpec

COLUMNS = {
    "model_id": "stable id: hash of the model's full config and seed",
    "cell_id": "phase-grid cell: models with the same config and different seeds",
    "population_id": "the vectorized training job the model was trained in",
    "arch_id": "architecture id; keys layout.parquet and the HDF5 groups",
    "task": "training task",
    "seed": "user-facing seed (phase.seeds); random streams derive from model_id",
    "config.<section>.<field>": "the model's full resolved config (axes and fixed values)",
    "split": "train / val / test, assigned by model with a seeded hash",
    "status": "ok, or diverged (a non-finite loss; weights frozen at the last finite state)",
    "diverged_step": "first step with a non-finite loss or update, -1 if none",
    "n_params": "trainable parameters",
    "train_loss / train_acc": "final mean cross-entropy (nats) / accuracy on the model's own "
                              "training samples and labels (label noise and subset included)",
    "test_loss / test_acc": "final mean cross-entropy / accuracy on the clean test set",
    "ggap": "generalization gap: train_acc - test_acc (tasks without accuracy: test_loss - train_loss)",
    "wall_time_s": "population wall time divided by its number of models (seconds)",
    "hessian.top_eig / hessian.trace": "top eigenvalue (power iteration) and trace (Hutchinson, "
                                       "Rademacher probes) of the training-loss Hessian at the final weights, "
                                       "on the first metrics.hessian_batches x hessian_batch_size training samples",
    "hessian.*_iters / *_converged": "iterations used and whether the relative tolerance was met",
    "spectral.<metric>_mean": "mean over layers of a per-layer spectral metric of layers.parquet "
                              "(alpha, alpha_weighted, log_norm, stable_rank, farms_alpha, ...)",
    "connectivity.mc": "mean Bezier mode connectivity (train loss) over the model's same-cell pairs; "
                       "negative = barrier (sign convention below)",
    "connectivity.barrier": "mean naive linear-path barrier (max variant, train loss) over its same-cell pairs",
    "similarity.cka": "mean linear CKA of logits on the probe batch over its same-cell pairs",
    "phase / cell_phase": "Yang et al. (2021) phase (I, II, III, IV-A, IV-B) of the model / of its cell; "
                          "thresholds in zoo.json `phase_thresholds`",
    "metrics_note": "why landscape or spectral metrics are missing (NaN) for this model, empty if none",
}

PAIRS = [
    "- `pairs.parquet`: one row per (model_a, model_b, alignment) of same-cell pairs (with "
    "`metrics.pairs = \"population\"` also pairs across the cells of a population, flagged `cross_cell`, "
    "`cell_id_b` the cell of model_b; their Bezier bend trains with model_a's lr). `alignment`: `none` "
    "(the raw pair), `weight` / `activation` (B permuted onto A by weight or activation matching), "
    "`weight+repair` (matching, then REPAIR statistics correction of the interpolated networks).",
    "  Barrier columns `barrier_<variant>.<split>.<metric>` with variant `max` = max_t v(t) - (v(0)+v(1))/2, "
    "`lin` = max_t [v(t) - ((1-t) v(0) + t v(1))], `mid` = v(1/2) - (v(0)+v(1))/2, on split train/test and "
    "metric loss/err (err = 1 - accuracy); positive = a barrier. `curve.<split>.<metric>`: the values at the "
    "interpolation points (t evenly spaced in [0, 1]).",
    "  `mc.<split>.<metric>`: Bezier-curve mode connectivity, mc = (v(0)+v(1))/2 - v(t*) at the curve "
    "point t* of largest |v(t) - (v(0)+v(1))/2|. This is the reference zoo's convention (Yang et al. 2021, "
    "Schurholt et al. 2025): mc < 0 means a barrier, mc > 0 a curve below its endpoints, mc near 0 "
    "well connected. BatchNorm statistics are re-estimated at every evaluated point.",
    "  `cka.logits` / `cka.penultimate`: linear CKA of the two models' representations on a fixed probe batch. "
    "`perm.<name>`: the permutation applied to model_b (git-re-basin convention perm[i] = j: unit i of "
    "the aligned B is unit j of B), so the aligned model can be rebuilt with "
    "`zoo.metrics.matching.apply_permutation`.",
    "- `layers.parquet`: one row per (model_id, step, layer) with the layer's spectral metrics "
    "(ESD power-law alpha, xmin, KS distance, FARMS alpha, norms, ranks).",
    "- `plots/*.png`: phase diagrams (capacity x temperature heat maps of test accuracy, log Hessian trace, "
    "mc, CKA and the phase label).",
]


def dataset_card(spec: ZooSpec, models: pd.DataFrame, tables: tuple[str, ...] = (),
                 split_files: list[str] = ()) -> str:
    """README.md of a zoo: the Hugging Face header (a config per table; ``models`` with its
    train / validation / test files, ``models-all`` with every row), schema, coverage; studies add
    their own config and section (studies.runner.card_with_study)."""
    def split_of(path: str) -> str:
        return path.removeprefix("splits/models-").removesuffix(".parquet")

    from .. import __version__

    axes = ", ".join(f"{a.name} = {a.key} in {a.values}" for a in spec.phase.axes) or "none"
    status = models["status"].value_counts().to_dict()
    lines = [
        "---",
        "configs:",
        "- config_name: models",
        "  data_files:",
        *([line for f in split_files for line in (f"  - split: {split_of(f)}", f"    path: {f}")]
          or ["  - split: train", "    path: models.parquet"]),
        "  default: true",
        "- config_name: models-all",
        "  data_files:",
        "  - split: train",
        "    path: models.parquet",
        "- config_name: checkpoints",
        "  data_files:",
        "  - split: train",
        "    path: checkpoints/part-*.parquet",
        "- config_name: layout",
        "  data_files:",
        "  - split: train",
        "    path: layout.parquet",
        *[line for name in tables for line in (f"- config_name: {name}", "  data_files:", "  - split: train",
                                               f"    path: {name}.parquet")],
        "tags:",
        "- weight-space-learning",
        "- model-zoo",
        "---",
        "",
        f"# Model zoo `{spec.name}`",
        "",
        spec.description or "",
        "",
        f"Made by zoo {__version__}. {len(models)} models "
        f"({', '.join(f'{v} {k}' for k, v in status.items())}) of `{spec.arch.family}` on "
        f"`{spec.task.name}`; phase axes: {axes}; seeds {spec.phase.seeds}.",
        "",
        "## Files",
        "",
        "- `models.parquet`: one row per model (columns below). `pandas.read_parquet` is all you need.",
        "- `checkpoints/part-*.parquet`: one row per (model_id, step) with `epoch`, the metrics at that "
        "step and `weights`, the flat float32 vector (one part per architecture).",
        "- `layout.parquet`: per arch_id and state_dict tensor: `name`, `shape`, `start`, `end` "
        "(offsets in the flat vector), `layer_idx`, `role`, `layer_type`, `activation_after`.",
        "- `zoo.h5`: `/weights/<arch_id>` final weights [N, P], `/checkpoints/<arch_id>` [N, K, P], "
        "`/index/<arch_id>` model ids (row order), `/layout/*` mirroring layout.parquet.",
        "- `zoo.json`: the spec as run, versions, phase thresholds used, and the sha256 of every file.",
        *PAIRS,
        "",
        "Flat weight order is the PyTorch `state_dict` order (floating-point entries only; "
        "BatchNorm's integer `num_batches_tracked` is left out), each tensor C-order.",
        "",
        "## Phase coverage",
        "",
        "Cells per phase label (`cell_phase`, Yang et al. 2021; rules in zoo.json's `phase_thresholds`):",
        "",
        "```",
        *coverage_lines(phase_coverage(models)),
        "```",
        "",
        "## Columns of models.parquet",
        "",
        *[f"- `{k}`: {v}" for k, v in COLUMNS.items()],
        "",
        "## Load",
        "",
        "```python",
        "import pandas as pd",
        "models = pd.read_parquet('models.parquet')",
        "ckpt = pd.read_parquet('checkpoints')  # or zoo.datasets.load(folder)",
        "```",
        "",
    ]
    return "\n".join(lines)
