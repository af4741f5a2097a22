"""Studies over a published zoo: numbers against direct computations, and the `zoo study` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_datasets import SMOKE_SETS, built_zoo

from zoo.datasets import load, verify
from zoo.errors import SpecError
from zoo.functional import from_flat
from zoo.io import sha256_file
from zoo.studies import STUDIES
from zoo.studies.prune import magnitude_masks, prunable
from zoo.studies.runner import annotate, card_with_study, read_metadata
from zoo.studies.shift import shifted

ZOO = [sys.executable, "-m", "zoo.cli"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*ZOO, *args], capture_output=True, text=True, env=os.environ.copy())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_root) -> Path:
    return built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS)


@pytest.fixture
def zoo_copy(smoke, tmp_path) -> Path:
    dst = tmp_path / "zoo"
    shutil.copytree(smoke, dst)
    return dst


def study(name: str, root: Path, *overrides: str) -> pd.DataFrame:
    """The rows ``zoo study`` publishes (study run + phase/cell annotation), without writing them."""
    s, zoo = STUDIES[name], load(root)
    return annotate(zoo, s.run(zoo, s.resolve(list(overrides))))


def direct_logits(zoo, model_id: str, x: np.ndarray) -> torch.Tensor:
    """Logits of one model loaded on its own (``Zoo.model``), in float64."""
    net = zoo.model(model_id).double()
    with torch.no_grad():
        return net(zoo.input_adapter(zoo.models.set_index("model_id").at[model_id, "arch_id"])(
            torch.as_tensor(x)).double())


# ---------------------------------------------------------------- ensemble

def test_ensemble_accuracy_is_the_accuracy_of_averaged_logits_of_loaded_models(smoke):
    rows = study("ensemble", smoke, "study.groups=2")
    zoo = load(smoke)
    x, y = zoo.task_data().x_test, torch.as_tensor(zoo.task_data().y_test)
    stored = zoo.models.set_index("model_id")["test_acc"]
    assert set(rows["kind"]) >= {"cell"} and rows["k"].max() == 4  # 4 seeds per cell: k = 2..4
    checked = rows.groupby(["kind", "k"]).head(1)
    for r in checked.itertuples():
        logits = torch.stack([direct_logits(zoo, m, x) for m in r.models])
        acc = (logits.mean(0).argmax(-1) == y).double().mean().item()
        assert r.ensemble_acc == pytest.approx(acc, abs=1e-12)
        assert r.member_mean_acc == pytest.approx(stored[r.models].mean(), abs=1e-6)
        assert r.gain == pytest.approx(acc - stored[r.models].mean(), abs=1e-6)
    cell = rows[rows["kind"] == "cell"]
    assert (cell.groupby(["cell_id", "k"]).size() <= 2).all()
    # same-cell member CKA computed here on the test set agrees with the published pair CKA rows
    pairs = cell[cell["k"] == 2]
    np.testing.assert_allclose(pairs["members_cka"], pairs["pair_cka"], atol=1e-3)


def test_ensembles_across_cells_are_split_by_phase_agreement(smoke):
    rows = study("ensemble", smoke)
    cross = rows[rows["kind"] != "cell"]
    models = load(smoke).models.set_index("model_id")
    assert len(cross)
    for r in cross.itertuples():
        phases = set(models.loc[r.models, "cell_phase"])
        assert len(set(r.cells)) == r.k and models.loc[r.models, "arch_id"].nunique() == 1
        assert (len(phases) == 1) == (r.kind == "phase-consistent")
        assert r.cell_phase == (phases.pop() if len(phases) == 1 else "mixed")


# ---------------------------------------------------------------- prune

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_pruning_zeroes_exactly_that_fraction_of_the_smallest_weights(smoke, sparsity):
    zoo = load(smoke)
    aid = zoo.arch_ids[0]
    params, _ = from_flat(torch.from_numpy(zoo.arch(aid).weights()), zoo.layout_of(aid))
    masks = magnitude_masks(params, sparsity)
    names = prunable(params)
    assert names and all(params[n].dim() >= 3 for n in names) and set(masks) == set(names)
    w = torch.cat([params[n].flatten(1) for n in names], 1)
    keep = torch.cat([masks[n].flatten(1) for n in names], 1)
    assert ((1 - keep).sum(1) == round(sparsity * w.shape[1])).all()
    if sparsity > 0:  # one global threshold per model: every kept |w| >= every pruned |w|
        pruned_max = torch.where(keep == 0, w.abs(), -1).max(1).values
        kept_min = torch.where(keep == 1, w.abs(), np.inf).min(1).values
        assert (kept_min >= pruned_max).all()


def test_prune_study_scores_match_direct_computation_and_masks_hold(smoke):
    rows = study("prune", smoke, "study.sparsities=[0.0,0.8]", "study.finetune_steps=5")
    zoo = load(smoke)
    stored = zoo.models.set_index("model_id")["test_acc"]
    dense = rows[rows["sparsity"] == 0.0].set_index("model_id")
    np.testing.assert_allclose(dense["pruned_acc"], stored[dense.index], atol=1e-6)
    np.testing.assert_allclose(dense["dense_acc"], stored[dense.index], atol=1e-6)
    # a pruned model rebuilt by hand gives the study's accuracy
    r = rows[rows["sparsity"] == 0.8].iloc[0]
    net = zoo.model(r.model_id).double()
    weights = torch.cat([p.detach().flatten() for n, p in net.named_parameters() if p.dim() >= 2])
    cut = weights.abs().sort(stable=True).values[round(0.8 * len(weights)) - 1]
    with torch.no_grad():
        for _, p in net.named_parameters():
            if p.dim() >= 2:
                p.mul_((p.abs() > cut).double())
        x = zoo.input_adapter(zoo.arch_ids[0])(torch.as_tensor(zoo.task_data().x_test)).double()
        acc = (net(x).argmax(-1) == torch.as_tensor(zoo.task_data().y_test)).double().mean().item()
    assert r.pruned_acc == pytest.approx(acc, abs=2e-3)  # ties at the cut may differ by a weight or two
    assert rows["finetuned_acc"].notna().all() and (rows["finetuned_acc"] != rows["pruned_acc"]).any()


def test_masked_finetune_keeps_pruned_weights_at_zero(smoke):
    from zoo.studies.base import own_training_data, populations, task_data, train_stacked

    zoo = load(smoke)
    data = task_data(zoo)
    pop = next(populations(zoo, data))
    masks = magnitude_masks(pop.params, 0.7)
    pruned = {k: v * masks[k] if k in masks else v for k, v in pop.params.items()}
    labels, order = own_training_data(pop, torch.as_tensor(data.y_train), data.n_classes, 3, "test")
    m = len(pop.model_ids)
    tuned, _ = train_stacked(pop, pruned, pop.buffers, pop.x_train, labels, order, torch.full((m,), 0.05),
                             torch.full((m,), 0.9), masks)
    for k in masks:
        assert (tuned[k][masks[k] == 0] == 0).all()
        assert not torch.equal(tuned[k], pruned[k])


# ---------------------------------------------------------------- shift

def test_shift_at_strength_zero_is_the_published_test_accuracy(smoke):
    rows = study("shift", smoke, "study.noise=[0.0,1.0]", "study.translate=[0,3]")
    zoo = load(smoke)
    stored = zoo.models.set_index("model_id")["test_acc"]
    clean = rows[rows["strength"] == 0]
    assert len(clean) == 2 * len(stored)
    np.testing.assert_allclose(clean["test_acc"], stored[clean["model_id"]], atol=1e-6)
    noisy = rows[(rows["shift"] == "noise") & (rows["strength"] == 1.0)]
    assert (noisy["test_acc"].to_numpy() != stored[noisy["model_id"]].to_numpy()).any()
    # a translated test set scored by the model loaded on its own
    r = rows[(rows["shift"] == "translate") & (rows["strength"] == 3)].iloc[0]
    x = zoo.task_data().x_test
    moved = np.zeros_like(x)
    moved[:, 3:] = x[:, :-3]
    acc = (direct_logits(zoo, r.model_id, moved).argmax(-1) == torch.as_tensor(zoo.task_data().y_test))
    assert r.test_acc == pytest.approx(acc.double().mean().item(), abs=1e-12)


def test_shifted_noise_is_seeded_and_scaled():
    x = torch.zeros(4, 10)
    a, b = shifted(x, "noise", 2.0, scale=3.0, seed=1), shifted(x, "noise", 2.0, scale=3.0, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, shifted(x, "noise", 2.0, scale=3.0, seed=2))
    assert 3.0 < a.std().item() < 9.0  # std 6
    assert torch.equal(shifted(torch.arange(5.0)[None], "translate", -2), torch.tensor([[2.0, 3, 4, 0, 0]]))


# ---------------------------------------------------------------- options and the card

def test_options_are_typed_finite_and_in_range():
    s = STUDIES["prune"]
    assert s.resolve(["study.sparsities=[0.5, 0]"])["sparsities"] == [0.5, 0.0]  # ints become floats
    assert s.resolve([])["finetune_steps"] == 50
    assert s.resolve(["study.lr_scale=2"])["lr_scale"] == 2.0
    for bad in ["study.sparsities=[1.5]", "study.sparsities=[]", "study.finetune_steps=1.5", "study.lr_scale=inf",
                "study.lr_scale=nan", "study.finetune_steps=-1", "study.nope=1", "sparsities=[0.5]",
                "study.threshold=true", "study.sparsities=0.5"]:
        with pytest.raises(SpecError):
            s.resolve([bad])


def test_card_gets_one_config_and_one_section_per_study():
    card = "---\nconfigs:\n- config_name: models\n  data_files:\n  - split: train\n    path: models.parquet\n" \
           "tags:\n- model-zoo\n---\n\n# Zoo\n\n## Files\n\ntext\n"
    entry = {"options": {"a": 1}, "file": "studies/shift.parquet", "plot": "plots/study-shift.png",
             "wall_time_s": 1.0, "wall_time_per_model_s": 0.1}
    once = card_with_study(card, STUDIES["shift"], entry)
    twice = card_with_study(once, STUDIES["shift"], {**entry, "options": {"a": 2}})
    assert twice.count("config_name: study-shift") == 1 and twice.count("## Study `shift`") == 1
    assert "a = 2" in twice and "a = 1" not in twice
    head = twice.split("---")[1]
    assert head.index("study-shift") < head.index("tags:") and "## Files" in twice
    both = card_with_study(twice, STUDIES["ensemble"], {**entry, "file": "studies/ensemble.parquet"})
    assert both.count("config_name: study-") == 2 and "path: studies/ensemble.parquet" in both


# ---------------------------------------------------------------- the command

def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_zoo_study_publishes_verifies_and_resumes(zoo_copy):
    args = ["study", "shift", str(zoo_copy), "--set", "study.noise=[0.0,0.5]", "--set", "study.translate=[0,2]",
            "--quiet"]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    table, plot = zoo_copy / "studies" / "shift.parquet", zoo_copy / "plots" / "study-shift.png"
    manifest = json.loads((zoo_copy / "zoo.json").read_text())
    for path in (table, plot, zoo_copy / "README.md"):
        assert manifest["files"][path.relative_to(zoo_copy).as_posix()] == sha256_file(path)
    rows = pd.read_parquet(table)
    assert len(rows) == 4 * 16 and {"cell_id", "cell_phase", "phase", "config.arch.width",
                                    "config.train.lr"} <= set(rows)
    models = load(zoo_copy).models.set_index("model_id")
    assert (rows["cell_phase"].to_numpy() == models.loc[rows["model_id"], "cell_phase"].to_numpy()).all()
    meta = read_metadata(table)
    assert meta["options"]["noise"] == [0.0, 0.5] and meta["wall_time_per_model_s"] > 0
    assert manifest["studies"]["shift"]["options"] == meta["options"]
    assert "config_name: study-shift" in (zoo_copy / "README.md").read_text()
    assert run("verify", str(zoo_copy)).returncode == 0

    before = snapshot(zoo_copy)
    again = run(*args)
    assert again.returncode == 0 and "already done" in again.stdout
    assert snapshot(zoo_copy) == before
    changed = run(*args[:-1], "--set", "study.seed=1", "--quiet")
    assert changed.returncode == 0 and "already done" not in changed.stdout
    assert json.loads((zoo_copy / "zoo.json").read_text())["studies"]["shift"]["options"]["seed"] == 1
    assert run("verify", str(zoo_copy)).returncode == 0


@pytest.mark.parametrize("args", [["shift", "--set", "study.noise=[nan]"], ["shift", "--set", "study.nope=1"],
                                  ["shift", "--set", "study.translate=[1.5]"], ["nosuchstudy"]])
def test_bad_study_options_exit_2_with_one_line(zoo_copy, args):
    before = snapshot(zoo_copy)
    r = run("study", args[0], str(zoo_copy), *args[1:])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert snapshot(zoo_copy) == before


def test_a_corrupted_zoo_is_refused_before_writing(zoo_copy):
    part = sorted((zoo_copy / "checkpoints").glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    before = snapshot(zoo_copy)
    r = run("study", "ensemble", str(zoo_copy))
    assert r.returncode == 2 and "sha256" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert snapshot(zoo_copy) == before and not (zoo_copy / "studies").exists()


def test_verify_flags_a_study_table_naming_unknown_models(zoo_copy):
    (zoo_copy / "studies").mkdir()
    pd.DataFrame({"models": [["m-nope", "m-none"]], "cell_id": ["c"]}).to_parquet(zoo_copy / "studies" / "x.parquet")
    assert any("studies/x.parquet" in p and "m-none" in p for p in verify(zoo_copy))


# ---------------------------------------------------------------- merge

@pytest.fixture(scope="module")
def merged_rows(smoke) -> pd.DataFrame:
    return study("merge", smoke, "study.ks=[2,3]", "study.groups=2", "study.ste_steps=15")


def test_naive_merge_is_the_average_of_the_loaded_models(smoke, merged_rows):
    zoo = load(smoke)
    x, y = zoo.task_data().x_test, torch.as_tensor(zoo.task_data().y_test)
    for k in (2, 3):
        r = merged_rows[(merged_rows["method"] == "naive") & (merged_rows["fix"] == "none")
                        & (merged_rows["k"] == k)].iloc[0]
        nets = [zoo.model(m).double() for m in r.models]
        avg = nets[0]
        avg.load_state_dict({n: sum(net.state_dict()[n] for net in nets) / k for n in avg.state_dict()})
        with torch.no_grad():
            logits = avg(zoo.input_adapter(zoo.arch_ids[0])(torch.as_tensor(x)).double())
        assert r.merged_acc == pytest.approx((logits.argmax(-1) == y).double().mean().item(), abs=1e-12)
        stored = zoo.models.set_index("model_id").loc[r.models]
        assert r.member_mean_loss == pytest.approx(stored["test_loss"].mean(), abs=1e-6)
        assert r["barrier_mid.test.loss"] == pytest.approx(r.merged_loss - stored["test_loss"].mean(), abs=1e-6)


def test_weight_matched_pair_merge_is_the_published_aligned_midpoint(smoke, merged_rows):
    pairs = load(smoke).pairs
    aligned = pairs[pairs["alignment"] == "weight"]
    rows = merged_rows[(merged_rows["method"] == "weight") & (merged_rows["fix"] == "none") & (merged_rows["k"] == 2)]
    checked = 0
    for r in aligned.itertuples():
        match = rows[rows["models"].map(lambda m, r=r: m == [r.model_a, r.model_b])]
        if len(match):
            curve = np.asarray(pairs.loc[r.Index, "curve.test.loss"])
            assert match["merged_loss"].iloc[0] == pytest.approx(curve[len(curve) // 2], abs=1e-6)
            checked += 1
    assert checked


def test_ste_merge_of_two_is_not_worse_than_weight_matching_on_training_loss(merged_rows):
    plain = merged_rows[(merged_rows["fix"] == "none") & (merged_rows["k"] == 2)]
    by = plain.pivot_table(index=plain["models"].map(tuple), columns="method", values="merged_train_loss")
    assert (by["ste"] <= by["weight"] + 1e-9).all()  # its first step is weight matching; it keeps the best
    assert set(merged_rows["fix"]) == {"none", "repair"} and set(merged_rows["k"]) == {2, 3}


def test_k_way_repair_of_two_is_lmc_repair_at_the_midpoint(smoke):
    from zoo.metrics.lmc import repair
    from zoo.metrics.paths import interpolate
    from zoo.studies.base import populations, task_data
    from zoo.studies.merge import repair_merged

    zoo = load(smoke)
    pop = next(populations(zoo, task_data(zoo)))
    a = {n: v[[0, 2]] for n, v in pop.params.items()}
    b = {n: v[[1, 3]] for n, v in pop.params.items()}
    half = torch.tensor([0.5], dtype=torch.float64)
    mid = interpolate(a, b, half)
    ours = repair_merged(pop.model, [a, b], mid, pop.x_train[:256])
    ref = repair(pop.model, a, b, mid, half, pop.x_train[:256])
    for n in ref:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-10, atol=1e-12)
    assert any(not torch.equal(ours[n], mid[n]) for n in mid)


def test_merge_many_recovers_planted_permutations_of_three_copies(smoke):
    from zoo.metrics.matching import apply_permutation_stacked, permutation_spec, random_perms
    from zoo.studies.base import populations, task_data
    from zoo.studies.merge import merge_many

    zoo = load(smoke)
    pop = next(populations(zoo, task_data(zoo)))
    spec = permutation_spec(pop.model)
    one = {n: v[:1] for n, v in pop.params.items()}
    copies = apply_permutation_stacked(spec, random_perms(spec, 2, seed=3), {n: v.expand(2, *v.shape[1:])
                                                                              for n, v in one.items()})
    params = {n: torch.cat([one[n], copies[n]]) for n in one}
    perms = merge_many(spec, params, torch.tensor([[0, 1, 2]]))
    for j in (1, 2):
        back = apply_permutation_stacked(spec, {p: v[:, j] for p, v in perms.items()},
                                         {n: v[j:j + 1] for n, v in params.items()})
        for n in one:
            torch.testing.assert_close(back[n], one[n], rtol=0, atol=0)


# ---------------------------------------------------------------- speed-ups keep the numbers

def _plain_weight_matching(spec, params, pairs, seed: int, tol: float = 1e-12) -> dict:
    """Weight matching as first written: every pair solves every step's LAP (nothing skipped)."""
    from zoo.metrics.matching import _cost, identity_perms, linear_assignment

    a = {k: v[pairs[:, 0]].double() for k, v in params.items() if k in spec.axes_to_perm}
    b = {k: v[pairs[:, 1]].double() for k, v in params.items() if k in spec.axes_to_perm}
    perms, names = identity_perms(spec, len(pairs)), list(spec.perm_to_axes)
    gen = torch.Generator().manual_seed(seed)
    active, sweeps = torch.ones(len(pairs), dtype=torch.bool), torch.zeros(len(pairs), dtype=torch.long)
    for _ in range(100):
        idx = active.nonzero()[:, 0]
        if not len(idx):
            break
        changed = torch.zeros(len(idx), dtype=torch.bool)
        for pi in torch.randperm(len(names), generator=gen).tolist():
            p = names[pi]
            sub = {q: v[idx] for q, v in perms.items()}
            cost = _cost(spec, p, {k: v[idx] for k, v in a.items()}, {k: v[idx] for k, v in b.items()}, sub)
            new = linear_assignment(cost)
            old_val = cost.gather(2, sub[p][:, :, None]).sum((1, 2))
            better = cost.gather(2, new[:, :, None]).sum((1, 2)) - old_val > tol * old_val.abs().clamp_min(1.0)
            perms[p][idx[better]] = new[better]
            changed |= better
        sweeps[idx] += 1
        active[idx[~changed]] = False
    return {"perms": perms, "sweeps": sweeps}


def test_weight_matching_that_skips_unchanged_costs_gives_the_plain_result(smoke):
    from zoo.metrics.matching import apply_permutation_stacked, permutation_spec, random_perms, weight_matching
    from zoo.studies.base import populations, task_data

    zoo = load(smoke)
    for pop in populations(zoo, task_data(zoo)):
        spec = permutation_spec(pop.model)
        m = len(pop.model_ids)
        # trained pairs, and near-copies (a permuted model plus noise: the warm-started case of STE)
        noisy = apply_permutation_stacked(spec, random_perms(spec, m, seed=1),
                                          {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=torch.Generator()
                                                                               .manual_seed(2), dtype=v.dtype)
                                           for k, v in pop.params.items()})
        both = {k: torch.cat([v, noisy[k]]) for k, v in pop.params.items()}
        pairs = torch.tensor([(i, j) for i in range(m) for j in range(i + 1, m)] + [(i, m + i) for i in range(m)])
        for seed in (0, 3):
            ours, plain = weight_matching(spec, both, pairs, seed=seed), _plain_weight_matching(spec, both, pairs, seed)
            assert torch.equal(ours["sweeps"], plain["sweeps"])
            for p in plain["perms"]:
                assert torch.equal(ours["perms"][p], plain["perms"][p])
        lean = weight_matching(spec, both, pairs, objectives=False)
        assert set(lean) == {"perms", "sweeps"}


def test_linear_assignments_spread_over_threads_are_the_serial_answers():
    from scipy.optimize import linear_sum_assignment

    from zoo.metrics.matching import linear_assignment

    cost = torch.randn(9, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = linear_assignment(cost)
        torch.set_num_threads(2)
        threaded = linear_assignment(cost)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(serial, threaded)
    for c, perm in zip(cost.numpy(), threaded, strict=True):
        assert perm.tolist() == linear_sum_assignment(c, maximize=True)[1].tolist()


def test_ste_budget_snapshots_are_the_shorter_searches(smoke):
    from zoo.metrics.matching import permutation_spec
    from zoo.metrics.ste import ste_merge
    from zoo.studies.base import populations, task_data

    zoo = load(smoke)
    pop = next(populations(zoo, task_data(zoo)))
    spec, groups = permutation_spec(pop.model), torch.tensor([[0, 1], [2, 3], [4, 5]])
    args = (pop.model, pop.objective, spec, pop.params, pop.buffers, groups, pop.x_train, pop.y_train)
    long = ste_merge(*args, steps=12, at=(4, 12), select=256)
    short = ste_merge(*args, steps=4, select=256)
    for p in short["perms"]:
        assert torch.equal(long["at"][4][0][p], short["perms"][p])
        assert torch.equal(long["at"][12][0][p], long["perms"][p])
    np.testing.assert_array_equal(long["at"][4][1], short["loss"])
    assert ((long["best_step"] >= 1) & (long["best_step"] <= 12)).all()
    assert (long["loss"] <= long["loss_first"]).all() and (long["loss"] <= short["loss"]).all()


TINY = {  # preset -> overrides: 3 seeds of 1-2 cells, so k = 2 and k = 3 merges exist
    "vit-digits": ["task.n_train=200", "task.n_test=100", "train.batch_size=32",
                   "phase.axes=[{key='arch.width',values=[8]},{key='train.lr',values=[0.001,0.003]}]"],
    "gpt-modular": ["task.modulus=11", "task.n_train=60", "task.n_test=60", "train.batch_size=16",
                    "phase.axes=[{key='arch.width',values=[8]},{key='task.train_fraction',values=[1.0]}]"],
}


@pytest.mark.parametrize("preset", sorted(TINY))
def test_merge_with_ste_runs_on_a_tiny_transformer_zoo(preset, tmp_path_factory, data_root):
    root = built_zoo(tmp_path_factory, f"{preset}-tiny", preset,
                     ["train.steps=30", "train.checkpoints=2", "phase.seeds=[0,1,2]", "metrics.hessian_max_iter=5",
                      "metrics.hessian_batches=1", *TINY[preset]])
    r = run("study", "merge", str(root), "--set", "study.ste_steps=4", "--set", "study.probe=32", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = pd.read_parquet(root / "studies" / "merge.parquet")
    assert set(rows["method"]) == {"naive", "weight", "activation", "ste"} and set(rows["k"]) == {2, 3}
    for col in ("merged_acc", "merged_loss", "merged_train_loss", "barrier_mid.test.loss", "acc_gap"):
        assert np.isfinite(rows[col]).all(), col
    # LayerNorm nets: no BatchNorm reset, no REPAIR, and the rows say why
    assert set(rows["fix"]) == {"none"} and rows["note"].str.contains("no BatchNorm reset or REPAIR").all()
    ste = rows[rows["method"] == "ste"]
    assert ste["ste_best_step"].between(1, 4).all()
    assert verify(root) == []


def test_an_architecture_without_a_permutation_spec_gets_naive_rows_and_a_note(smoke, monkeypatch):
    import zoo.studies.merge as merge

    def refuse(model):
        raise ValueError("permutation_spec: unsupported module Foo")

    monkeypatch.setattr(merge, "permutation_spec", refuse)
    rows = study("merge", smoke, "study.ks=[2]", "study.groups=1", "study.methods=[\"naive\", \"weight\"]")
    naive, weight = rows[rows["method"] == "naive"], rows[rows["method"] == "weight"]
    assert np.isfinite(naive["merged_acc"]).all() and weight["merged_acc"].isna().all()
    assert weight["note"].str.contains("weight alignment cannot apply: permutation_spec: unsupported").all()


# ---------------------------------------------------------------- finetune

def test_relabelling_moves_every_class():
    from zoo.studies.finetune import relabelling

    for seed in range(5):
        perm = relabelling(10, seed)
        assert sorted(perm.tolist()) == list(range(10)) and (perm != torch.arange(10)).all()


def test_finetune_and_scratch_equal_a_per_model_sgd_loop(smoke):
    from zoo.studies.base import batch_order, study_seed
    from zoo.studies.finetune import relabelling

    steps = 6
    rows = study("finetune", smoke, f"study.steps={steps}", "study.target=relabel").set_index("model_id")
    zoo = load(smoke)
    data = zoo.task_data()
    perm = relabelling(10, study_seed("finetune", "relabel", 0))
    mid = zoo.model_ids[0]
    adapt = zoo.input_adapter(zoo.models.set_index("model_id").at[mid, "arch_id"])
    x, y = adapt(torch.as_tensor(data.x_train)).double(), perm[torch.as_tensor(data.y_train)]
    xt, yt = adapt(torch.as_tensor(data.x_test)).double(), perm[torch.as_tensor(data.y_test)]
    cfg = zoo.config(mid)
    order = batch_order(len(x), steps, cfg["train.batch_size"], study_seed(mid, "finetune", 0))
    for start, column in ((None, "finetuned_acc"), (0, "scratch_acc")):
        net = zoo.model(mid, step=start).double()
        opt = torch.optim.SGD(net.parameters(), lr=cfg["train.lr"], momentum=cfg["train.momentum"])
        for idx in order:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            acc = (net(xt).argmax(-1) == yt).double().mean().item()
        assert rows.at[mid, column] == pytest.approx(acc, abs=1e-12)
    assert rows.at[mid, "gain"] == rows.at[mid, "finetuned_acc"] - rows.at[mid, "scratch_acc"]


def test_regenerated_mnist1d_with_the_source_knobs_is_the_zoos_task(smoke):
    from zoo.generators.tasks import load_task_section
    from zoo.studies.finetune import MNIST1D_TRANSLATION, regenerated

    zoo = load(smoke)
    task = zoo.manifest["spec"]["task"]
    source, same = load_task_section(task), regenerated(task, MNIST1D_TRANSLATION, 1.0)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(same[key], getattr(source, key))
    state = np.random.get_state()[1].copy()
    changed = regenerated(task, 12, 2.0)
    assert np.array_equal(np.random.get_state()[1], state)  # the global numpy stream is left alone
    assert changed["x_train"].shape == source.x_train.shape and set(changed["y_train"]) == set(source.y_train)
    assert not np.allclose(changed["x_train"], source.x_train)
    again = regenerated(task, 12, 2.0)  # cached and deterministic
    assert all(np.array_equal(again[k], changed[k]) for k in changed)


def test_finetune_on_the_regenerated_task_is_the_default_and_keeps_the_generic_targets(smoke):
    rows = study("finetune", smoke, "study.steps=4")
    assert (rows["target"] == "regenerate").all() and {"translation", "noise_scale"} <= set(rows)
    assert rows[["zero_shot_acc", "finetuned_acc", "scratch_acc"]].notna().all().all()
    # the target is a different task: the models' accuracy on it is not their source accuracy
    assert (rows["zero_shot_acc"] != rows["source_acc"]).any()
    noise = study("finetune", smoke, "study.steps=2", "study.target=noise", "study.strength=0.5")
    assert (noise["target"] == "noise").all() and (noise["strength"] == 0.5).all()


def test_regenerate_refuses_a_task_without_a_generator():
    from types import SimpleNamespace

    from zoo.errors import DatasetError
    from zoo.studies.finetune import target_task

    data = SimpleNamespace(name="digits", x_train=np.zeros((4, 64)), x_test=np.zeros((2, 64)),
                           y_train=np.zeros(4, int), y_test=np.zeros(2, int), n_classes=10)
    with pytest.raises(DatasetError, match="relabel, noise or translate"):
        target_task(data, "regenerate", 1.0, 0, {"data_seed": 0, "n_train": 4, "n_test": 2})
    assert target_task(data, "relabel", 1.0, 0)[1].shape == (4,)


# ---------------------------------------------------------------- registry and example

@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_declares_valid_defaults_and_documents_its_columns(name):
    s = STUDIES[name]
    assert s.name == name and s.summary and s.row and s.columns
    assert s.resolve([]) == {k: o.default for k, o in s.options.items()}


def test_merge_wm_vs_ste_example_reports_the_measured_numbers(zoo_copy, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "merge_wm_vs_ste.py"
    spec = importlib.util.spec_from_file_location("merge_wm_vs_ste", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "report.md"
    result = example.main([str(zoo_copy), "--ks", "2", "3", "--groups", "1", "--ste-steps", "5", "--out", str(out)])
    rows = pd.read_parquet(zoo_copy / "studies" / "merge.parquet")
    plain = rows[(rows["fix"] == "none") & (rows["k"] == 2)]
    wm = plain[plain["method"] == "weight"].groupby("cell_id")["merged_acc"].mean().mean()
    line = next(s for s in result["summary"] if s["fix"] == "none" and s["k"] == "2")
    assert line["wm_acc"] == pytest.approx(wm) and line["cells"] == plain["cell_id"].nunique()
    text = out.read_text()
    assert f"{wm:.4f}" in text and "command:" in text and "nan" not in text.lower()
    assert verify(zoo_copy) == []
    assert example.main([str(zoo_copy), "--ks", "2", "3", "--groups", "1", "--ste-steps", "5", "--out",
                         str(out)])["resumed"]
