"""The vectorized trainer against the plain per-model loop, and its determinism guarantees."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from zoo.functional import stack_states
from zoo.generators.architectures import build_model
from zoo.generators.population import Member, TrainConfig, make_forward, member_data, train_population
from zoo.generators.reference import train_model_loop


def mlp(width=16):
    return lambda: build_model("mlp", in_dim=40, out_dim=10, width=width, depth=2)


def cnn_data(d):
    return replace(d, x_train=d.x_train[:, None], x_test=d.x_test[:, None])


MEMBERS = [
    Member("a", seed=11, lr=0.05, momentum=0.9),
    Member("b", seed=12, lr=0.02, momentum=0.5, weight_decay=1e-3, label_noise=0.2),
    Member("c", seed=13, lr=0.1, momentum=0.0, train_fraction=0.5),
]


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "constant"), ("sgd", "cosine"), ("sgd", "onecycle"),
                                                ("adam", "constant")])
def test_population_matches_per_model_loop(mnist1d_small, optimizer, schedule):
    cfg = TrainConfig(steps=40, batch_size=32, checkpoint_steps=[0, 40], optimizer=optimizer,
                      schedule=schedule)
    members = MEMBERS if optimizer == "sgd" else [replace(m, lr=m.lr / 20) for m in MEMBERS]
    res = train_population(mlp(), members, mnist1d_small, cfg)
    for i, mb in enumerate(members):
        ref = train_model_loop(mlp(), mb, mnist1d_small, cfg)
        np.testing.assert_allclose(res.weights[-1, i], ref, rtol=0, atol=2e-5)


def test_cnn_with_batchnorm_matches_loop_including_running_stats(mnist1d_small):
    d = cnn_data(mnist1d_small)
    build = lambda: build_model("cnn", in_channels=1, out_dim=10, width=4)  # noqa: E731
    cfg = TrainConfig(steps=20, batch_size=32, checkpoint_steps=[0, 20])
    res = train_population(build, MEMBERS, d, cfg)
    names = [t.name for t in res.layout.tensors]
    assert "1.running_var" in names
    for i, mb in enumerate(MEMBERS):
        ref = train_model_loop(build, mb, d, cfg)
        np.testing.assert_allclose(res.weights[-1, i], ref, rtol=0, atol=2e-5)
    # running stats differ per model: each model keeps its own
    rv = res.layout["1.running_var"]
    stats = res.weights[-1, :, rv.start:rv.end]
    assert not np.allclose(stats[0], stats[1])


def test_model_weights_do_not_depend_on_population_mates(mnist1d_small):
    cfg = TrainConfig(steps=30, batch_size=32, checkpoint_steps=[0, 15, 30])
    together = train_population(mlp(), MEMBERS, mnist1d_small, cfg)
    alone = train_population(mlp(), MEMBERS[1:2], mnist1d_small, cfg)
    assert np.array_equal(together.weights[:, 1], alone.weights[:, 0])  # bitwise, MLP fast path
    # the vmap path (CNN): batched convolutions may round differently, within float tolerance
    d = cnn_data(mnist1d_small)
    build = lambda: build_model("cnn", in_channels=1, out_dim=10, width=4)  # noqa: E731
    together = train_population(build, MEMBERS, d, cfg)
    alone = train_population(build, MEMBERS[2:], d, cfg)
    np.testing.assert_allclose(together.weights[:, 2], alone.weights[:, 0], rtol=0, atol=1e-5)


def test_same_members_give_bitwise_identical_weights(mnist1d_small):
    cfg = TrainConfig(steps=25, batch_size=32, checkpoint_steps=[25])
    a = train_population(mlp(), MEMBERS, mnist1d_small, cfg)
    b = train_population(mlp(), MEMBERS, mnist1d_small, cfg)
    assert np.array_equal(a.weights, b.weights)


def test_diverged_model_is_frozen_and_does_not_poison_others(mnist1d_small):
    members = [Member("ok", seed=1, lr=0.05), Member("boom", seed=2, lr=1e6, momentum=0.9),
               Member("ok2", seed=3, lr=0.02)]
    cfg = TrainConfig(steps=30, batch_size=32, checkpoint_steps=[0, 30])
    res = train_population(mlp(), members, mnist1d_small, cfg)
    assert res.status == ["ok", "diverged", "ok"]
    assert res.diverged_step[1] >= 0 and res.diverged_step[0] == -1
    assert np.isfinite(res.weights).all()
    alone = train_population(mlp(), [members[0], members[2]], mnist1d_small, cfg)
    assert np.array_equal(res.weights[:, [0, 2]], alone.weights)


@pytest.mark.parametrize("bad_lr", [float("nan"), float("inf")])
def test_non_finite_lr_freezes_the_model_at_its_initialisation(mnist1d_small, bad_lr):
    members = [Member("ok", seed=1, lr=0.05), Member("bad", seed=2, lr=bad_lr)]
    cfg = TrainConfig(steps=10, batch_size=32, checkpoint_steps=[0, 5, 10])
    res = train_population(mlp(), members, mnist1d_small, cfg)
    assert res.status == ["ok", "diverged"] and res.diverged_step[1] == 0
    assert np.isfinite(res.weights).all()
    assert np.array_equal(res.weights[-1, 1], res.weights[0, 1])  # the last finite state: its init


def test_fast_and_vmap_forward_agree():
    torch.manual_seed(0)
    models = [build_model("mlp", in_dim=40, out_dim=10, width=8) for _ in range(3)]
    params, buffers = stack_states(models)
    x = torch.randn(3, 7, 40)
    fast = make_forward(models[0])(params, buffers, x)
    wrapped = torch.nn.Sequential(torch.nn.Sequential(*models[0]))  # not a plain stack: vmap path
    p2 = {f"0.{k}": v for k, v in params.items()}
    slow = make_forward(wrapped)(p2, {}, x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_member_data_is_per_model_and_respects_load_axes(mnist1d_small):
    y = torch.as_tensor(mnist1d_small.y_train)
    m = Member("x", seed=5, lr=0.1, label_noise=0.3, train_fraction=0.25)
    labels, mask, order = member_data(m, y, 10, steps=100, batch=32)
    assert (labels != y).float().mean().item() == pytest.approx(0.3, abs=0.002)  # all flips change class
    assert mask.sum().item() == 250
    assert mask[order.flatten()].all()  # batches only from the subset
    labels2, _, order2 = member_data(m, y, 10, steps=100, batch=32)
    assert torch.equal(order, order2) and torch.equal(labels, labels2)


def test_augmentation_is_per_model_and_function_of_the_seed():
    from zoo.generators.population import augment_images, member_augmentation

    x = torch.arange(2 * 3 * 1 * 5 * 6, dtype=torch.float32).view(2, 3, 1, 5, 6)
    flip = torch.tensor([[True, False, False], [False, False, False]])
    shift = torch.zeros(2, 3, 2, dtype=torch.long)
    shift[0, 2] = torch.tensor([1, -2])
    out = augment_images(x, flip, shift)
    assert torch.equal(out[0, 0], x[0, 0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[0, 1], x[0, 1])
    assert torch.equal(out[0, 2, 0, :4, 2:], x[0, 2, 0, 1:, :4])  # content moved up 1, right 2
    assert (out[0, 2, 0, 4] == 0).all() and (out[0, 2, 0, :, :2] == 0).all()  # zero padding came in
    f1, s1 = member_augmentation(Member("a", 3, 0.1, augment=True), 10, 8)
    f2, s2 = member_augmentation(Member("a", 3, 0.1, augment=True), 10, 8)
    assert torch.equal(f1, f2) and torch.equal(s1, s2) and f1.any() and s1.abs().max() == 4


def test_augmenting_neighbour_does_not_change_a_model(data_root):
    from zoo.generators.tasks import load_task

    d = load_task("digits", 64, 32, 0)
    build = lambda: build_model("vit", in_channels=1, image_size=8, out_dim=10, width=8, depth=1, heads=2,
                                patch_size=4)
    cfg = TrainConfig(steps=4, batch_size=16, checkpoint_steps=[4])  # SGD: Adam amplifies rounding
    plain, aug = Member("p", 1, 0.05), Member("q", 2, 0.05, augment=True)
    together = train_population(build, [plain, aug], d, cfg)
    alone = train_population(build, [plain], d, cfg)
    np.testing.assert_allclose(together.weights[:, 0], alone.weights[:, 0], rtol=0, atol=1e-6)
    unaug = train_population(build, [Member("q", 2, 0.05)], d, cfg)
    assert not np.allclose(together.weights[:, 1], unaug.weights[:, 0])
