"""The architecture registry (zoo.generators.architectures.FAMILIES): one Family record per family,
declared in the family's own module; the rest of the package asks the registry and never names a
family. The MLP-Mixer is the family added to prove it: one module plus one registry line."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest
import torch
from torch import nn

from zoo.functional import stack_states
from zoo.generators.architectures import FAMILIES, build_for_task, build_model, check_fits
from zoo.generators.architectures.family import Family
from zoo.generators.tasks import TASKS, task_kind, task_shape
from zoo.metrics.matching import (
    apply_permutation,
    apply_permutation_stacked,
    permutation_spec,
    random_perms,
    weight_matching,
)
from zoo.spec import ArchSpec, SpecError, load_spec

torch.set_num_threads(1)
PACKAGE = Path(__file__).resolve().parents[1] / "zoo"

# family -> (a task it accepts, a task it refuses or None when it takes every task)
WRONG = {"mlp": ("mnist1d", None), "pinn": ("convection", "modular"), "cnn": ("mnist1d", "convection"),
         "cnn_s": ("mnist", "mnist1d"), "cnn_l": ("cifar10", "teacher_student"), "resnet18": ("digits", "modular"),
         "resnet50": ("cifar10", "convection"), "vit": ("digits", "mnist1d"), "gpt": ("modular", "digits"),
         "mixer": ("digits", "mnist1d")}


def task_of(name: str) -> tuple:
    """(task, input_shape, kind, vocab_size) as the spec passes them to Family.accepts."""
    shape, _, vocab = task_shape({"task.name": name, "task.modulus": 97, "task.input_dim": 16})
    return name, shape, task_kind(name), vocab


def test_registry_maps_each_name_to_its_family_record():
    arch_fields = {f.name for f in fields(ArchSpec)}
    assert set(WRONG) == set(FAMILIES)
    calibration = json.loads(resources.files("zoo").joinpath("calibration.json").read_text())["cpu"]
    for name, family in FAMILIES.items():
        assert isinstance(family, Family) and family.name == name
        assert set(family.fields) <= arch_fields - {"family", "init"}, name
        assert family.takes_dropout == ("dropout" in family.fields)
        task, arch = family.calibration
        assert set(arch) <= set(family.fields) and task in TASKS, name
        assert set(calibration[name]) == {"train_flops_per_s", "eval_flops_per_s", "step_s"}, name
        config = {"arch.family": name, **{f"arch.{k}": v for k, v in arch.items()}, "task.name": task,
                  "task.modulus": 97, "task.input_dim": 16}
        check_fits(config, *task_shape(config))  # its calibration model takes its calibration task
    assert [n for n, f in FAMILIES.items() if f.takes_dropout] == ["mlp", "cnn", "cnn_s", "cnn_l"]
    assert [n for n, f in FAMILIES.items() if f.permutation is not None] == ["vit", "gpt", "mixer"]


@pytest.mark.parametrize("name", sorted(WRONG))
def test_family_accepts_its_task_and_refuses_a_wrong_one_with_a_reason(name):
    family = FAMILIES[name]
    good, bad = WRONG[name]
    assert family.accepts(*task_of(good)) is None
    if bad is None:
        assert all(family.accepts(*task_of(t)) is None for t in TASKS)
        return
    reason = family.accepts(*task_of(bad))
    assert isinstance(reason, str) and reason and "\n" not in reason and bad in reason
    with pytest.raises(SpecError, match=rf"^arch.family={name} .*; task {bad} takes arch.family mlp"):
        load_spec("smoke", [f"task.name='{bad}'", f"arch.family='{name}'", "task.n_train=200", "task.n_test=100",
                            "train.batch_size=8", "phase.axes=[]"])


def test_family_check_and_dropout_rules_come_from_the_records():
    with pytest.raises(SpecError, match=r"arch.width \(12\) must be divisible by arch.heads \(5\)"):
        load_spec("vit-digits", ["arch.width=12", "arch.heads=5", "phase.axes=[]"])
    with pytest.raises(SpecError, match="arch.dropout applies to arch.family mlp, cnn, cnn_s, cnn_l, not mixer"):
        load_spec("mixer-digits", ["arch.dropout=0.5"])
    with pytest.raises(SpecError, match="arch.family: expected one of mlp, .*, mixer, got 'nope'"):
        load_spec("smoke", ["arch.family='nope'"])
    with pytest.raises(SpecError, match="mixer .*image size 8 is not a multiple of patch size 3"):
        load_spec("mixer-digits", ["arch.patch_size=3"])


def test_importing_the_spec_does_not_import_torch():
    code = "import sys, zoo.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- the new family: MLP-Mixer

def _mixer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("mixer", in_channels=1, image_size=8, out_dim=10, width=8, depth=2, patch_size=2)
    with torch.no_grad():  # LayerNorm starts at (1, 0): randomise it so a missed permutation shows
        for name, p in model.named_parameters():
            if ".ln" in name or name.startswith("ln"):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_mixer_builds_for_digits_with_paper_hidden_sizes():
    build, adapt = build_for_task({"arch.family": "mixer", "arch.width": 16, "arch.depth": 2, "arch.patch_size": 2},
                                  (1, 8, 8), 10)
    model = build()
    blk = model.blocks[0]
    assert blk.token_mlp[0].weight.shape == (8, 16)  # D_S = width / 2 over 16 patches of 2 x 2
    assert blk.channel_mlp[0].weight.shape == (64, 16)  # D_C = 4 width
    assert sum(p.numel() for p in model.parameters()) == 5226
    assert model(adapt(torch.zeros(3, 1, 8, 8))).shape == (3, 10)


def test_mixer_permutation_preserves_function_and_leaves_the_token_axis_alone():
    model = _mixer()
    spec = permutation_spec(model)
    assert spec.sizes == {"P_stream": 8, **{f"P_blocks.{i}.{m}": n for i in range(2)
                                            for m, n in (("token_mlp", 4), ("channel_mlp", 32))}}
    a2p = spec.axes_to_perm
    assert a2p["blocks.0.token_mlp.0.weight"] == ("P_blocks.0.token_mlp", None)  # tokens stay in place
    assert a2p["blocks.1.token_mlp.2.weight"] == (None, "P_blocks.1.token_mlp")
    assert a2p["blocks.0.token_mlp.2.bias"] == (None,) and a2p["head.bias"] == (None,)
    assert a2p["blocks.1.channel_mlp.2.weight"] == ("P_stream", "P_blocks.1.channel_mlp")
    assert a2p["patch.weight"][0] == a2p["ln.bias"][0] == a2p["head.weight"][1] == "P_stream"
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        y = model(x)
        for seed in range(3):
            perms = {p: v[0] for p, v in random_perms(spec, 1, seed=seed).items()}
            permuted = apply_permutation(spec, perms, state)
            assert sum(not torch.equal(permuted[k], state[k]) for k in state) > 10
            model.load_state_dict(permuted, strict=False)
            torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        # permuting the token axis (a fixed one) breaks the function: the declaration is not vacuous
        wrong = dict(permuted)
        wrong["blocks.0.token_mlp.0.weight"] = permuted["blocks.0.token_mlp.0.weight"].roll(1, dims=1)
        model.load_state_dict(wrong, strict=False)
        assert (model(x) - y).abs().max() > 1e-4


def test_weight_matching_aligns_planted_mixer_permutations():
    """B = pi(A): the planted inverse is the global optimum of J (= |A|^2). Coordinate descent
    (Ainsworth et al.) never ends below the identity and reaches the optimum for most random Mixers;
    on the rest it stalls (the stream is coupled to the channel-mixing units alone), which is a
    property of the algorithm, not of the declared spec (the permutation test above)."""
    recovered = 0
    for seed in range(10):
        model = _mixer(seed)
        spec = permutation_spec(model)
        params, _ = stack_states([model])
        planted = random_perms(spec, 1, seed=100 + seed)
        both = {k: torch.cat([v, apply_permutation_stacked(spec, planted, params)[k]]) for k, v in params.items()}
        out = weight_matching(spec, both, [(0, 1)])
        optimum = sum(float((v[0].double() ** 2).sum()) for v in params.values())
        assert float(out["objective_identity"][0]) <= float(out["objective"][0]) <= optimum * (1 + 1e-12)
        ok = all(torch.equal(out["perms"][p][0], torch.argsort(v[0])) for p, v in planted.items())
        assert ok == (float(out["objective"][0]) == pytest.approx(optimum, rel=1e-12))
        recovered += ok
    assert recovered >= 7


def test_mixer_declaration_refuses_a_tensor_it_does_not_know():
    model = _mixer()
    model.blocks[1].gate = nn.Parameter(torch.ones(8))
    with pytest.raises(ValueError, match=r"does not cover \['blocks.1.gate'\]"):
        permutation_spec(model)


# ---------------------------------------------------------------- nobody else names a family

LITERAL_ALLOWED = {  # (module, literal): why it is not a family branch
    ("zoo/spec.py", "mlp"): "ArchSpec.family's default value (the default zoo's family)",
}


def test_no_module_outside_the_architectures_package_names_a_family():
    """String literals equal to a family name, branches on a family name, the old tuple read by
    index: only the family modules and the registry (and presets and tests) may hold them. The task
    kind "pinn" shares its name with the PINN family: literals on lines about a ``kind`` pass."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith(("zoo/generators/architectures/", "zoo/presets/")):
            continue
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in FAMILIES and (rel, node.value) not in LITERAL_ALLOWED:
                line = lines[node.lineno - 1]
                if "kind" not in line.lower():
                    found.append(f"{rel}:{node.lineno}: {line.strip()}")
        for i, line in enumerate(lines, 1):
            if re.search(r"family\s*(==|!=|\bin\b|\bnot in\b)\s*[\"'(\[]|family\.startswith|FAMILIES\[[^]]*\]\[\d",
                         line):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "family names outside the registry:\n" + "\n".join(found)
