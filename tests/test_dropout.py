"""SeededDropout: counter-based masks that make dropout reproducible per model under vmap."""

import numpy as np
import pytest
import torch

from zoo.functional import layout_of, make_forward, stack_states
from zoo.generators.architectures import build_model
from zoo.generators.architectures.dropout import (
    SeededDropout,
    keep_mask,
    mix32,
    no_dropout,
    stack_dropout_state,
)
from zoo.generators.population import Member, TrainConfig, init_models, train_population
from zoo.generators.reference import train_model_loop

MEMBERS = [
    Member("a", seed=11, lr=0.05, momentum=0.9),
    Member("b", seed=12, lr=0.02, momentum=0.5, weight_decay=1e-3, label_noise=0.2),
    Member("c", seed=13, lr=0.1, momentum=0.0, train_fraction=0.5),
]


def mlp(p):
    return lambda: build_model("mlp", in_dim=40, out_dim=10, width=16, depth=2, dropout=p)


def lowbias32(x: int) -> int:
    """Plain-Python uint32 reference of the hash (Wellons' lowbias32)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_is_lowbias32_on_the_full_32_bit_range():
    xs = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**31 + 1, 0xDEADBEEF, 2**32 - 1]
    xs += np.random.default_rng(0).integers(0, 2**32, 1000).tolist()
    got = mix32(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert got == [lowbias32(x) for x in xs]


def test_masks_keep_one_minus_p_and_are_independent_across_keys_and_steps():
    p, shape = 0.3, (200, 500)
    a = keep_mask(torch.tensor(7), torch.tensor(0), shape, p, torch.device("cpu"))
    assert a.shape == shape and abs(a.float().mean().item() - (1 - p)) < 0.005
    assert torch.equal(a, keep_mask(torch.tensor(7), torch.tensor(0), shape, p, torch.device("cpu")))
    for key, step in ((8, 0), (7, 1), (7 ^ 1, 1)):  # neighbouring keys / steps: unrelated masks
        b = keep_mask(torch.tensor(key), torch.tensor(step), shape, p, torch.device("cpu"))
        agree = (a == b).float().mean().item()
        assert abs(agree - ((1 - p) ** 2 + p**2)) < 0.005  # what two independent masks agree on


def test_stacked_keys_give_each_model_its_scalar_mask():
    keys, steps = torch.tensor([3, 99, 2**32 - 1]), torch.tensor([0, 5, 17])
    stacked = keep_mask(keys, steps, (4, 6), 0.5, torch.device("cpu"))
    for i in range(3):
        assert torch.equal(stacked[i], keep_mask(keys[i], steps[i], (4, 6), 0.5, torch.device("cpu")))


def test_train_mode_scales_kept_units_and_eval_is_identity():
    layer = SeededDropout(0.25)
    layer.key.fill_(5)
    x = torch.ones(1000, 64)
    y = layer(x)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert layer.step.item() == 1 and not torch.equal(y, layer(x))  # the counter moves the mask
    assert torch.equal(layer.eval()(x), x)
    with no_dropout(layer.train()):
        assert torch.equal(layer(x), x)
    assert layer.p == 0.25


def test_dropout_keys_come_from_their_own_stream_and_leave_the_init_untouched():
    with_dropout, without = init_models(mlp(0.5), [1, 2]), init_models(mlp(0.0), [1, 2])
    for a, b in zip(with_dropout, without):
        flat_a, flat_b = stack_states([a])[0], stack_states([b])[0]
        assert flat_a.keys() == flat_b.keys()  # same tensor names: "1_dropout" follows layer "1"
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_b)
    assert layout_of(with_dropout[0]) == layout_of(without[0])
    keys = stack_dropout_state(with_dropout)
    assert set(keys) == {"1_dropout.key", "1_dropout.step", "3_dropout.key", "3_dropout.step"}
    assert len({*keys["1_dropout.key"].tolist(), *keys["3_dropout.key"].tolist()}) == 4  # per model, per layer


@pytest.mark.parametrize("kernels", [True, False])
def test_fast_linear_path_draws_the_masks_of_the_module_forward(kernels):
    models = init_models(mlp(0.5), [1, 2, 3])
    x = torch.randn(3, 8, 40)
    params, buffers = stack_states(models)
    buffers |= stack_dropout_state(models)
    template = models[0].train()
    fast = make_forward(template, kernels=kernels)(params, buffers, x)
    for i, m in enumerate(models):
        m.train()
        torch.testing.assert_close(fast[i], m(x[i]), rtol=0, atol=1e-6)
    assert buffers["1_dropout.step"].tolist() == [1, 1, 1] and models[1].get_buffer("1_dropout.step").item() == 1


def test_population_with_dropout_matches_per_model_loop(mnist1d_small):
    cfg = TrainConfig(steps=30, batch_size=32, checkpoint_steps=[0, 30])
    res = train_population(mlp(0.5), MEMBERS, mnist1d_small, cfg)
    plain = train_population(mlp(0.0), MEMBERS, mnist1d_small, cfg)
    np.testing.assert_array_equal(res.weights[0], plain.weights[0])  # same init
    for i, mb in enumerate(MEMBERS):
        ref = train_model_loop(mlp(0.5), mb, mnist1d_small, cfg)
        np.testing.assert_allclose(res.weights[-1, i], ref, rtol=0, atol=2e-5)
        assert np.abs(res.weights[-1, i] - plain.weights[-1, i]).max() > 1e-3  # dropout acted
    alone = train_population(mlp(0.5), MEMBERS[1:2], mnist1d_small, cfg)
    assert np.array_equal(res.weights[:, 1], alone.weights[:, 0])  # masks do not depend on mates


def test_cnn_dropout_on_the_vmap_path_matches_per_model_loop(mnist1d_small):
    from dataclasses import replace

    d = replace(mnist1d_small, x_train=mnist1d_small.x_train[:, None], x_test=mnist1d_small.x_test[:, None])
    build = lambda: build_model("cnn", in_channels=1, out_dim=10, width=4, dropout=0.3)  # noqa: E731
    cfg = TrainConfig(steps=15, batch_size=32, checkpoint_steps=[15])
    res = train_population(build, MEMBERS, d, cfg)
    for i, mb in enumerate(MEMBERS):
        np.testing.assert_allclose(res.weights[-1, i], train_model_loop(build, mb, d, cfg), rtol=0, atol=2e-5)


def test_ids_and_fingerprints_published_before_the_dropout_axis_are_unchanged():
    from zoo.datasets.writer import arch_id
    from zoo.generators.sampling import plan_models
    from zoo.pipeline import spec_fingerprint
    from zoo.spec import load_spec

    spec = load_spec("smoke")  # ids computed by the release before arch.dropout existed
    plans = plan_models(spec)
    # the fingerprint (what a resume must match) changed once since, on purpose: the Bezier bend
    # protocol (metrics.bezier_steps = -1, bezier_budget) changes every mc, so old shards must not resume
    assert spec_fingerprint(spec) == "c3d08aa7e8f861a4"
    assert [p.model_id for p in plans[:3]] == ["m-21fdb9f9144cf0", "m-85227f26818777", "m-8b78dd5f951d13"]
    assert (plans[0].cell_id, arch_id(plans[0].config)) == ("c-c5d11e5dae", "mlp-6d7041db")
    dropped = plan_models(load_spec("smoke", ["arch.dropout=0.5"]))
    assert not {p.model_id for p in dropped} & {p.model_id for p in plans}


DROPOUT_SPEC = """
name = "dropout-axis"
[task]
name = "mnist1d"
n_train = 600
n_test = 300
[arch]
family = "mlp"
width = 16
[train]
steps = 60
batch_size = 32
checkpoints = 2
[metrics]
bezier_steps = 5
[phase]
seeds = [0, 1]
[[phase.axes]]
name = "dropout"
key = "arch.dropout"
values = [0.0, 0.5]
"""


def test_build_with_a_dropout_axis(tmp_path, data_root):
    import subprocess
    import sys

    import pandas as pd

    from zoo.datasets.reader import load

    (tmp_path / "spec.toml").write_text(DROPOUT_SPEC)
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "build", "--preset", str(tmp_path / "spec.toml"),
                        "--out", str(tmp_path / "zoo"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = pd.read_parquet(tmp_path / "zoo" / "models.parquet")
    assert sorted(m["config.arch.dropout"]) == [0.0, 0.0, 0.5, 0.5] and set(m["status"]) == {"ok"}
    assert m.groupby("config.arch.dropout")["arch_id"].nunique().eq(1).all() and m["arch_id"].nunique() == 2
    for col in ("hessian.top_eig", "connectivity.mc", "similarity.cka", "spectral.alpha_mean"):
        assert m[col].notna().all(), col  # metrics of the deterministic (eval-mode) net
    zoo = load(tmp_path / "zoo")
    data = zoo.task_data()
    x, y = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    for _, row in m.iterrows():  # a reloaded dropout model is the deterministic eval-mode net
        net = zoo.model(row.model_id)
        assert any(isinstance(mod, SeededDropout) for mod in net.modules()) == (row["config.arch.dropout"] > 0)
        with torch.no_grad():
            acc = (net(x).argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(row["test_acc"], abs=1e-6)
