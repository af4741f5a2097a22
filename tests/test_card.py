"""The dataset card states the training protocol, licence and citation with the spec's own values, and
its cross-references point the right way."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from zoo.datasets import card
from zoo.generators.sampling import plan_models
from zoo.spec import load_spec

SETS = ["task.name=digits", "task.n_train=600", "task.n_test=150", "task.augment=true", "arch.family=vit",
        "arch.depth=1", "arch.heads=2", "arch.patch_size=4", "train.steps=90", "train.batch_size=32",
        "train.optimizer=adam", "train.schedule=onecycle", "train.weight_decay=0.0005", "train.checkpoints=3",
        "phase.seeds=[3, 5]",
        'phase.axes=[{name = "capacity", key = "arch.width", values = [8, 16]}, '
        '{name = "temperature", key = "train.lr", values = [0.0003, 0.003]}]']


@pytest.fixture(scope="module")
def zoo_card():
    spec = load_spec("smoke", SETS)
    plans = plan_models(spec)
    models = pd.DataFrame([{"model_id": p.model_id, "cell_id": p.cell_id, "status": "ok",
                            **{f"config.{k}": v for k, v in p.config.items()}} for p in plans])
    return spec, card.dataset_card(spec, models, ("pairs", "layers"))


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_training_protocol_states_the_specs_values(zoo_card):
    spec, text = zoo_card
    protocol = section(text, "Training protocol")
    for expected in ("`digits` (classification)", "600 training / 150 test samples", "random horizontal flips",
                     "`vit`", "width 8, 16 (phase axis `capacity`)", "depth 1", "heads 2", "patch_size 4",
                     "Adam (betas 0.9, 0.999", "weight decay 0.0005", "0.0003, 0.003 (phase axis `temperature`)",
                     "one-cycle", "Steps: 90 at batch size 32", "4.8 epochs", "steps 0, 30, 60, 90",
                     "Seeds: 3, 5 in each cell; 8 models in 4 cells (grid sampler)"):
        assert expected in protocol, expected
    assert "dropout" not in protocol  # the family does not take it
    assert text.index("## Training protocol") < text.index("## Files")


def test_sgd_zoo_names_its_momentum_and_no_augmentation():
    spec = load_spec("smoke")
    models = pd.DataFrame([{"model_id": p.model_id, "cell_id": p.cell_id, "status": "ok",
                            **{f"config.{k}": v for k, v in p.config.items()}} for p in plan_models(spec)])
    protocol = section(card.dataset_card(spec, models), "Training protocol")
    assert f"SGD with momentum {spec.train.momentum:g}" in protocol and "Augmentation: none." in protocol
    assert f"Steps: {spec.train.steps} at batch size {spec.train.batch_size}" in protocol


def test_licence_follows_the_package_and_says_the_user_may_relicense(zoo_card, monkeypatch):
    spec, text = zoo_card
    header = text.split("\n---\n", 1)[0]
    hf_id, declared = card.licence()
    assert f"\nlicense: {hf_id}" in header
    assert "you may publish it under a licence of your choice" in section(text, "Licence")
    monkeypatch.setattr("importlib.metadata.metadata", lambda name: {"License-Expression": "MIT"})
    text = card.dataset_card(spec, pd.DataFrame({"model_id": [], "status": []}))
    assert "\nlicense: mit\n" in text and "whose licence is MIT" in section(text, "Licence")


def test_citation_gives_bibtex_for_the_tool_and_the_reference_papers(zoo_card):
    spec, text = zoo_card
    cite = section(text, "Citation")
    assert "```bibtex" in cite and "@software{zoo," in cite and f"`{spec.name}`" in cite
    assert "@inproceedings{yang2021taxonomizing," in cite and "Taxonomizing local versus global structure" in cite
    assert "@article{schurholt2025phase," in cite and "arXiv:2504.18072" in cite
    assert cite.count("{") == cite.count("}")  # balanced BibTeX braces


def test_cross_references_point_the_right_way(zoo_card):
    _, text = zoo_card
    conventions = text.index("\n## Sign conventions\n")
    for m in re.finditer(r"sign convention[^.;)]*\bbelow\b", text):
        assert m.start() < conventions, "a 'below' reference after the section it names"
    for m in re.finditer(r"sign convention[^.;)]*\babove\b", text):
        assert m.start() > text.index("\n## Files\n"), "an 'above' reference before the Files section"
    assert "negative = a barrier" in section(text, "Sign conventions")
    assert "positive = a barrier" in section(text, "Sign conventions")
