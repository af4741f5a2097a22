"""The dataset card (README.md of a published zoo): what every file and column means, how the
models were trained (from the spec), the sign conventions, the licence and how to cite it."""

from __future__ import annotations

import pandas as pd

from ..metrics.coverage import coverage_lines, phase_coverage
from ..spec import MetricsSpec, ZooSpec

COLUMNS = {  # what training and publishing write; each metric's columns come from the registry
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


def column_lines() -> list[str]:
    """The card's column list: training's columns, then each registered metric's (naming the
    file that computes it), then the phase labels and notes."""
    from ..metrics.registry import METRICS

    head = {k: v for k, v in COLUMNS.items() if not k.startswith(("phase", "metrics_note"))}
    tail = {k: v for k, v in COLUMNS.items() if k not in head}
    lines = [f"- `{k}`: {v}" for k, v in head.items()]
    for metric in METRICS.values():
        where = metric.compute.__module__.replace(".", "/") + ".py"
        lines += [f"- `{k}` ({where}): {v}" for k, v in metric.columns.items()]
    return lines + [f"- `{k}`: {v}" for k, v in tail.items()]


def metrics_table() -> str:
    """README's metrics table, one row per registered metric (``python -m zoo.datasets.card``
    prints it; a test keeps README equal to it)."""
    from ..metrics.registry import METRICS

    default = MetricsSpec()
    rows = ["| metric (`zoo metrics NAME`) | file | what | switch | protocol |", "| --- | --- | --- | --- | --- |"]
    for m in METRICS.values():
        where = m.compute.__module__.removeprefix("zoo.metrics.") + ".py"
        switch = f"`metrics.{m.field}`" + ("" if m.enabled(default) else " (off by default)")
        rows.append(f"| {m.name} | `{where}` | {m.about} | {switch} | {m.protocol} |")
    return "\n".join(rows)


def metric_table_lines(tables: tuple[str, ...]) -> list[str]:
    """A Files entry for each present table a registered metric adds (beyond pairs and layers)."""
    from ..metrics.registry import METRICS

    lines = []
    for metric in METRICS.values():
        for name, keys in metric.tables.items():
            if name in tables:
                where = metric.compute.__module__.replace(".", "/") + ".py"
                lines.append(f"- `{name}.parquet`: one row per ({', '.join(keys)}): {metric.about} ({where}).")
    return lines


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
        f"license: {licence()[0]}",
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
        *training_protocol_lines(spec, models),
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
        *metric_table_lines(tables),
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
        *column_lines(),
        "",
        *SIGN_CONVENTIONS,
        "## Load",
        "",
        "```python",
        "import pandas as pd",
        "models = pd.read_parquet('models.parquet')",
        "ckpt = pd.read_parquet('checkpoints')  # or zoo.datasets.load(folder)",
        "```",
        "",
        *licence_lines(spec),
        *citation_lines(spec),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- protocol, conventions, licence, citation

SIGN_CONVENTIONS = [
    "## Sign conventions",
    "",
    "- Barriers (`barrier_<variant>.*` of pairs.parquet, `connectivity.barrier`): positive = a barrier, the "
    "path rises above its endpoints.",
    "- Mode connectivity (`mc.*` of pairs.parquet, `connectivity.mc`): mc = (v(0)+v(1))/2 - v(t*), the "
    "reference zoo's convention (Yang et al. 2021, Schurholt et al. 2025): negative = a barrier, positive = "
    "the curve runs below its endpoints, near 0 = well connected. A barrier is positive in the one and "
    "negative in the other.",
    "- `ggap` = train_acc - test_acc (tasks without accuracy: test_loss - train_loss): positive = better on "
    "the training samples than on the test set.",
    "",
]

SCHEDULES = {
    "constant": "constant",
    "cosine": "cosine annealing to 0 over the steps (torch's CosineAnnealingLR)",
    "onecycle": "one-cycle (torch's OneCycleLR: 30 % cosine warm-up from lr/25, then cosine down to lr/25e4; "
                "momentum not cycled)",
}


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def training_protocol_lines(spec: ZooSpec, models: pd.DataFrame) -> list[str]:
    """The card's training protocol: every setting training used, from the spec; where models differ
    (a phase axis), each value that occurs, read from the models' ``config.*`` columns."""
    from ..generators.sampling import checkpoint_steps
    from ..generators.tasks import task_kind

    axes = {a.key: a.name for a in spec.phase.axes}
    base = spec.model_configs()

    def values(key: str) -> list:
        col = f"config.{key}"
        if col in models and models[col].notna().any():
            return sorted(v.item() if hasattr(v, "item") else v for v in models[col].dropna().unique())
        return [base[key]]

    def show(key: str) -> str:
        vals = values(key)
        text = ", ".join(_fmt(v) for v in vals)
        if key in axes:
            return f"{text} (phase axis `{axes[key]}`)"
        return f"{text} (differs between models)" if len(vals) > 1 else text

    def family_fields() -> list[str]:
        try:
            from ..generators.architectures import FAMILIES

            fields = FAMILIES[spec.arch.family].fields
        except (ImportError, KeyError):
            fields = ("width", "depth", "activation")
        return [f for f in ("width", "depth", "activation", "init", "dropout", "heads", "patch_size") if f in fields
                or f == "init"]

    optimizers = values("train.optimizer")
    opt = "; ".join("Adam (betas 0.9, 0.999, eps 1e-8, bias-corrected)" if o == "adam"
                    else f"SGD with momentum {show('train.momentum')} (torch.optim.SGD's update)" for o in optimizers)
    if len(optimizers) > 1:
        opt += " (differs between models)"
    augment = values("task.augment")
    aug = ("random horizontal flips and shifts of up to +-4 pixels (zero padded), drawn per model and step"
           if augment == [True] else "none" if augment == [False] else show("task.augment"))
    steps = values("train.steps")
    if {"config.train.steps", "config.train.batch_size", "config.task.train_fraction"} <= set(models.columns):
        epochs = (models["config.train.steps"] * models["config.train.batch_size"]
                  / (spec.task.n_train * models["config.task.train_fraction"])).dropna().unique().tolist()
    else:
        epochs = [spec.train.steps * spec.train.batch_size / (spec.task.n_train * spec.task.train_fraction)]
    epoch_text = "-".join(f"{e:.3g}" for e in sorted({min(epochs), max(epochs)})) if epochs else "n/a"
    checkpoints = ", ".join(str(s) for s in checkpoint_steps(steps[-1], spec.train.checkpoints))
    cells = models["cell_id"].nunique() if "cell_id" in models else len(models) // max(len(spec.phase.seeds), 1)
    return [
        "## Training protocol",
        "",
        "How the models were trained, from the spec in `zoo.json`. A setting listed with several values is a "
        "phase axis (or differs between models); each model's own value is in its `config.<key>` column of "
        "models.parquet. Every model starts from its own initialisation, data subset, label noise and batch "
        "order, all seeded from its `model_id`. There is no early stopping or selection: the published weights "
        "are those after the last step (a diverged model keeps its last finite state, status `diverged`).",
        "",
        f"- Task: `{spec.task.name}` ({task_kind(spec.task.name)}), {show('task.n_train')} training / "
        f"{show('task.n_test')} test samples (dataset seed {spec.task.data_seed}).",
        f"- Training data per model: fraction {show('task.train_fraction')} of the training samples; label noise "
        f"{show('task.label_noise')} (fraction of its training labels replaced at random).",
        f"- Augmentation: {aug}.",
        f"- Architecture: `{spec.arch.family}`; " + ", ".join(f"{f} {show('arch.' + f)}" for f in family_fields())
        + ".",
        f"- Optimizer: {opt}; weight decay {show('train.weight_decay')} (an L2 term added to the gradient).",
        f"- Learning rate: {show('train.lr')}; schedule: {SCHEDULES.get(spec.train.schedule, spec.train.schedule)}.",
        f"- Steps: {show('train.steps')} at batch size {show('train.batch_size')}, i.e. {epoch_text} epochs of "
        "the samples a model trains on (steps x batch size / its training samples).",
        f"- Checkpoints: steps {checkpoints} (`checkpoints/`; step 0 is the initialisation)"
        + (" for the longest run; the others evenly spaced alike." if len(steps) > 1 else "."),
        f"- Seeds: {', '.join(_fmt(s) for s in spec.phase.seeds)} in each cell; {len(models)} models in {cells} "
        f"cells ({spec.phase.sampler} sampler).",
        "- Device, precision and software versions: `zoo.json`.",
        "",
    ]


def licence() -> tuple[str, str]:
    """(Hugging Face ``license:`` id, the licence as the zoo package declares it; "" if it declares none)."""
    from importlib import metadata

    try:
        meta = metadata.metadata("zoo")
        declared = (meta.get("License-Expression") or meta.get("License") or "").strip()
    except metadata.PackageNotFoundError:
        declared = ""
    if not declared or "\n" in declared or len(declared) > 40:  # absent, or a licence text, not an id
        return ("unknown" if not declared else "other"), declared
    return declared.lower(), declared


def licence_lines(spec: ZooSpec) -> list[str]:
    from .. import __version__

    hf_id, declared = licence()
    if declared:
        text = (f"These data were generated by zoo {__version__}, whose licence is {declared.splitlines()[0]}; "
                f"they are released under the same licence (`license: {hf_id}` in the header).")
    else:
        text = (f"The zoo package ({__version__}) that generated these data declares no licence (no `license` in "
                "its package metadata), so none is stated here (`license: unknown` in the header).")
    return [
        "## Licence",
        "",
        text + " As the creator of this zoo you may publish it under a licence of your choice: set `license:` "
        "in the header (a Hugging Face licence id such as `cc-by-4.0`) and edit this paragraph. The task's "
        f"dataset (`{spec.task.name}`) has its own licence; check it before publishing models trained on it.",
        "",
    ]


CITATIONS = {
    "yang2021taxonomizing": (
        "@inproceedings{yang2021taxonomizing,",
        "  title     = {Taxonomizing local versus global structure in neural network loss landscapes},",
        "  author    = {Yang, Yaoqing and Hodgkinson, Liam and Theisen, Ryan and Zou, Joe and Gonzalez, Joseph E. "
        "and Ramchandran, Kannan and Mahoney, Michael W.},",
        "  booktitle = {Advances in Neural Information Processing Systems},",
        "  volume    = {34},",
        "  year      = {2021},",
        "}"),
    "schurholt2025phase": (
        "@article{schurholt2025phase,",
        "  title   = {A Model Zoo on Phase Transitions in Neural Networks},",
        "  author  = {Sch{\\\"u}rholt, Konstantin and Meynent, L{\\'e}o and Zhou, Yefan and Lu, Haiquan and "
        "Yang, Yaoqing and Borth, Damian},",
        "  journal = {arXiv preprint arXiv:2504.18072},",
        "  year    = {2025},",
        "}"),
}


def citation_lines(spec: ZooSpec) -> list[str]:
    """BibTeX for the tool that generated the zoo and the work its protocol and metrics follow."""
    from datetime import date

    from .. import __version__

    tool = ("@software{zoo,",
            "  title   = {zoo: model zoos across loss-landscape phases},",
            "  author  = {{zoo contributors}},",
            f"  version = {{{__version__}}},",
            f"  year    = {{{date.today().year}}},",
            f"  note    = {{Model zoo `{spec.name}` generated with zoo {__version__}; spec in zoo.json}},",
            "}")
    return [
        "## Citation",
        "",
        "If you use this zoo, cite the tool that generated it and the work its phases and metrics follow: the "
        "phase taxonomy (I, II, III, IV-A, IV-B) and the mode-connectivity, Hessian and CKA metrics of Yang et al. "
        "(2021), and the phase-transition model zoos whose protocol (grid, Hessian and Bezier settings, mc sign) "
        "this one follows (Schurholt et al. 2025).",
        "",
        "```bibtex",
        *tool,
        "",
        *CITATIONS["yang2021taxonomizing"],
        "",
        *CITATIONS["schurholt2025phase"],
        "```",
        "",
    ]


if __name__ == "__main__":
    print(metrics_table())
