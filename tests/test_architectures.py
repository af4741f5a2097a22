"""Every architecture family on its natural task: flat round trip and a 2-model population."""

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from vision_files import write_cifar, write_mnist_like, write_svhn, write_tinyimagenet

from zoo.functional import layout_of, load_flat, population_forward, stack_states
from zoo.generators.architectures import build_for_task, build_model
from zoo.generators.population import Member, TrainConfig, train_population
from zoo.generators.tasks import DatasetMissing, load_task

CASES = {  # family: (task, task options, arch fields, optimizer, lr)
    "mlp": ("mnist1d", {}, {"width": 16, "depth": 2, "activation": "relu"}, "sgd", 0.05),
    "cnn": ("mnist1d", {}, {"width": 4, "depth": 2, "activation": "relu"}, "sgd", 0.05),
    "cnn_s": ("mnist", {}, {"width": 8, "activation": "tanh"}, "sgd", 0.05),
    "cnn_l": ("cifar10", {}, {"width": 16, "activation": "tanh"}, "sgd", 0.05),
    "resnet18": ("digits", {}, {"width": 2}, "sgd", 0.05),
    "resnet50": ("digits", {}, {"width": 2}, "sgd", 0.05),
    "vit": ("digits", {}, {"width": 8, "depth": 1, "heads": 2, "patch_size": 4}, "adam", 1e-3),
    "gpt": ("modular", {"modulus": 11}, {"width": 16, "depth": 1, "heads": 2}, "adam", 1e-3),
    "pinn": ("convection", {"beta": 1.0}, {"width": 16, "depth": 2, "activation": "tanh"}, "adam", 1e-3),
}


@pytest.fixture(scope="module")
def vision_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    write_mnist_like(root, "MNIST")
    write_mnist_like(root, "FashionMNIST")
    write_cifar(root)
    write_cifar(root, hundred=True)
    write_svhn(root)
    write_tinyimagenet(root)
    return root


def _task(family, vision_root):
    task, opts, arch, optimizer, lr = CASES[family]
    n_train, n_test = (60, 20) if task in ("mnist", "cifar10") else (32, 16)
    data = load_task(task, n_train, n_test, 0, vision_root if task in ("mnist", "cifar10") else None, **opts)
    config = {"arch.family": family, **{f"arch.{k}": v for k, v in arch.items()}}
    build, adapt = build_for_task(config, data.input_shape, data.n_classes, data.extras.get("vocab_size"))
    return replace(data, x_train=adapt(data.x_train), x_test=adapt(data.x_test)), build, optimizer, lr


@pytest.mark.parametrize("family", list(CASES))
def test_family_trains_as_a_population_and_round_trips(family, vision_root, data_root):
    data, build, optimizer, lr = _task(family, vision_root)
    res = train_population(build, [Member("a", 1, lr=lr), Member("b", 2, lr=lr)], data,
                           TrainConfig(steps=3, batch_size=16, checkpoint_steps=[0, 3], optimizer=optimizer))
    assert res.status == ["ok", "ok"] and np.isfinite(res.weights).all()
    assert not np.array_equal(res.weights[0, 0], res.weights[-1, 0])  # it trained
    assert not np.array_equal(res.weights[-1, 0], res.weights[-1, 1])  # different seeds, different models
    # flat -> model reproduces the population's outputs (BatchNorm stats included)
    model = build().eval()
    layout = layout_of(model)
    x = torch.as_tensor(data.x_test[:8])
    restored = [load_flat(build().eval(), torch.tensor(res.weights[-1, i]), layout) for i in range(2)]
    params, buffers = stack_states(restored)
    out = population_forward(model, params, buffers, x)
    with torch.no_grad():
        for i in range(2):
            torch.testing.assert_close(out[i], restored[i](x), rtol=1e-4, atol=1e-5)


def test_reference_parameter_counts():
    assert sum(p.numel() for p in build_model("cnn_s", in_channels=1, image_size=28, out_dim=10).parameters()) == 2464
    assert sum(p.numel() for p in build_model("cnn_l", in_channels=3, image_size=32, out_dim=10).parameters()) == 10853
    r18 = build_model("resnet18", in_channels=3, out_dim=10, width=64, depth=18)
    assert 11.1e6 < sum(p.numel() for p in r18.parameters()) < 11.2e6  # the CIFAR ResNet-18
    r50 = build_model("resnet50", in_channels=3, out_dim=10, width=64, depth=50)
    assert 23.4e6 < sum(p.numel() for p in r50.parameters()) < 23.6e6


@pytest.mark.parametrize("name,shape,classes", [
    ("mnist", (1, 28, 28), 10), ("fashion_mnist", (1, 28, 28), 10), ("cifar10", (3, 32, 32), 10),
    ("cifar100", (3, 32, 32), 100), ("svhn", (3, 32, 32), 10), ("tinyimagenet", (3, 64, 64), 200)])
def test_vision_readers_on_files_in_the_real_format(vision_root, name, shape, classes):
    d = load_task(name, 6, 4, 0, vision_root)
    assert d.x_train.shape == (6, *shape) and d.x_test.shape == (4, *shape) and d.n_classes == classes
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert abs(float(d.x_train.mean())) < 1e-4  # normalised with training statistics
    assert d.y_train.min() >= 0 and d.y_train.max() < classes


def test_missing_dataset_is_a_clear_offline_error(tmp_path):
    with pytest.raises(DatasetMissing, match="task.download=true"):
        load_task("cifar10", 10, 10, 0, tmp_path)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "zoo.cli", "build", "--preset", "smoke", "--out", str(out),
                        "--set", "task.name='cifar10'", "--set", "arch.family='cnn_l'", "--set", "task.n_train=100",
                        "--set", "task.n_test=50"], capture_output=True, text=True,
                       env={**__import__("os").environ, "ZOO_DATA": str(tmp_path / "empty")})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cifar10" in r.stderr
    assert not out.exists()


def test_pinn_error_is_relative_l2_to_the_analytic_solution():
    d = load_task("convection", 32, 400, 0, beta=5.0)
    np.testing.assert_allclose(d.y_test, np.sin(d.x_test[:, 0] - 5.0 * d.x_test[:, 1]), atol=1e-6)
    build, _ = build_for_task({"arch.family": "pinn", "arch.width": 8, "arch.depth": 1, "arch.activation": "tanh"},
                              d.input_shape, 1)
    res = train_population(build, [Member("a", 1, lr=1e-3)], d,
                           TrainConfig(steps=1, batch_size=16, checkpoint_steps=[0], optimizer="adam"))
    model = load_flat(build(), torch.tensor(res.weights[0, 0]))
    with torch.no_grad():
        u = model(torch.as_tensor(d.x_test))[:, 0].numpy()
    expected = np.linalg.norm(u - d.y_test) / np.linalg.norm(d.y_test)
    assert res.metrics["test_rel_l2"][0, 0] == pytest.approx(expected, rel=1e-5)


def test_modular_gpt_fits_its_training_set():
    d = load_task("modular", 200, 100, 0, modulus=23)
    assert d.x_train.shape == (200, 3) and (d.y_train == (d.x_train[:, 0] + d.x_train[:, 1]) % 23).all()
    build, _ = build_for_task({"arch.family": "gpt", "arch.width": 32, "arch.depth": 1, "arch.heads": 4},
                              d.input_shape, d.n_classes, d.extras["vocab_size"])
    res = train_population(build, [Member("a", 1, lr=3e-3, momentum=0.9)], d,
                           TrainConfig(steps=300, batch_size=50, checkpoint_steps=[300], optimizer="adam"))
    assert res.metrics["train_acc"][-1, 0] > 0.9, res.metrics["train_acc"]
    assert math.isfinite(res.metrics["test_loss"][-1, 0])
