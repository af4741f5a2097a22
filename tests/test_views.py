"""torch Dataset views: shapes, exact inverses, function-preserving rebuilds, normalization, augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_datasets import CNN_SETS, SMOKE_SETS, built_zoo
from torch.utils.data import DataLoader

from zoo.datasets import (
    VIEWS,
    FlatView,
    GraphView,
    NFNView,
    TokenView,
    compute_norm_stats,
    load,
    load_norm_stats,
    pad_tokens,
    permutation_index,
    random_permutation_index,
    to_pyg,
)
from zoo.datasets.views import affine_plan, hidden_sizes
from zoo.functional import load_flat


@pytest.fixture(scope="session")
def smoke_zoo(tmp_path_factory, data_root):
    return built_zoo(tmp_path_factory, "smoke", "smoke", SMOKE_SETS)


@pytest.fixture(scope="session")
def cnn_zoo(tmp_path_factory, data_root):
    return built_zoo(tmp_path_factory, "cnn", "cnn-smoke", CNN_SETS)


def _test_loss(zoo, model_id: str, flat: torch.Tensor) -> float:
    """Cross-entropy on the zoo's test set of model_id's architecture carrying ``flat``."""
    data = zoo.task_data()
    aid = zoo.models.set_index("model_id").loc[model_id, "arch_id"]
    x = torch.from_numpy(zoo.input_adapter(aid)(data.x_test))
    net = load_flat(zoo.model(model_id), flat, zoo.layout_of(aid)).eval()
    with torch.no_grad():
        return F.cross_entropy(net(x), torch.from_numpy(data.y_test)).item()


def test_view_shapes_mlp(smoke_zoo):
    zoo = load(smoke_zoo)
    aid = zoo.models.loc[zoo.models["config.arch.width"] == 8, "arch_id"].iloc[0]
    arch = zoo.arch(aid)  # 40 -> 8 -> 8 -> 10
    dims = [(8, 40), (8, 8), (10, 8)]
    flat = FlatView(arch)[0]
    assert flat["weights"].shape == (40 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10,)
    assert flat["model_id"] == arch.model_ids[0]
    assert flat["target"].item() == pytest.approx(arch.models["test_acc"].iloc[0])
    nfn = NFNView(arch)[0]
    assert [tuple(w.shape) for w in nfn["weights"]] == [(1, o, i) for o, i in dims]
    assert [tuple(b.shape) for b in nfn["biases"]] == [(1, o) for o, _ in dims]
    dws = VIEWS["dws"](arch)[0]
    assert [tuple(w.shape) for w in dws["weights"]] == [(i, o, 1) for o, i in dims]
    assert [tuple(b.shape) for b in dws["biases"]] == [(o, 1) for o, _ in dims]
    tok = TokenView(arch)[0]
    assert tok["tokens"].shape == (26, 41) and tok["mask"].shape == (26, 41)
    assert tok["positions"][:, 0].tolist() == [0] * 8 + [1] * 8 + [2] * 10
    assert tok["positions"][:, 1].tolist() == list(range(8)) * 2 + list(range(10))
    assert tok["mask"].sum().item() == sum(o * (i + 1) for o, i in dims)
    g = GraphView(arch)[0]
    assert g["x"].shape == (40 + 8 + 8 + 10, 1) and g["edge_attr"].shape == (40 * 8 + 64 + 80, 1)
    assert g["edge_index"].shape == (2, 464) and int(g["edge_index"].max()) == 65
    assert g["node_layer"].bincount().tolist() == [40, 8, 8, 10]
    assert torch.all(g["x"][:40] == 0)
    # edges go from a layer's nodes to the next layer's nodes only
    src_layer, dst_layer = g["node_layer"][g["edge_index"][0]], g["node_layer"][g["edge_index"][1]]
    assert torch.all(dst_layer == src_layer + 1)
    multi = TokenView(zoo, target=["test_acc", "train_loss"])[0]
    assert multi["target"].shape == (2,)


def test_view_shapes_cnn(cnn_zoo):
    zoo = load(cnn_zoo)
    arch = zoo.subset(zoo.models["config.arch.width"] == 4)  # conv 1->4 (k3), conv 4->4 (k3), linear 4->10
    nfn = NFNView(arch)[0]
    assert [tuple(w.shape) for w in nfn["weights"]] == [(1, 4, 1, 3), (1, 4, 4, 3), (1, 10, 4)]
    dws = VIEWS["dws"](arch)[0]
    assert [tuple(w.shape) for w in dws["weights"]] == [(1, 4, 3), (4, 4, 3), (4, 10, 1)]
    g = GraphView(arch)[0]
    assert g["edge_attr"].shape == (4 + 16 + 40, 3)
    assert torch.all(g["edge_attr"][-40:, 1:] == 0)  # linear weights padded to the kernel length
    tok = TokenView(arch)[0]
    assert tok["tokens"].shape == (18, 13)


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_invert_exactly_mlp(smoke_zoo, name):
    zoo = load(smoke_zoo)
    stats = compute_norm_stats(zoo)
    for aid in zoo.arch_ids:
        arch = zoo.arch(aid)
        raw = arch.weights(as_torch=True)
        for norm in (None, stats):
            view = VIEWS[name](arch, normalize=norm)
            for i in range(len(view)):
                assert torch.allclose(view.decode(view[i]), raw[i], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_view_rebuilt_model_reproduces_stored_test_loss(smoke_zoo, cnn_zoo, name):
    for root in (smoke_zoo, cnn_zoo):
        zoo = load(root)
        for aid in zoo.arch_ids:
            arch = zoo.arch(aid)
            view = VIEWS[name](arch, normalize=compute_norm_stats(zoo))
            item = view[0]
            stored = arch.models["test_loss"].iloc[0]
            assert _test_loss(zoo, item["model_id"], view.decode(item)) == pytest.approx(stored, abs=1e-4)


def test_batchnorm_is_folded_into_the_conv(cnn_zoo):
    zoo = load(cnn_zoo)
    arch = zoo.arch(zoo.arch_ids[0])
    w = arch.weights(as_torch=True)[0]
    lay = arch.layout_of(arch.arch_ids[0])
    get = lambda name: w[lay[name].start:lay[name].end].view(lay[name].shape)  # noqa: E731
    s = get("1.weight") / torch.sqrt(get("1.running_var") + 1e-5)
    nfn = NFNView(arch)[0]
    torch.testing.assert_close(nfn["weights"][0][0], get("0.weight") * s[:, None, None])
    torch.testing.assert_close(nfn["biases"][0][0], get("1.bias") - get("1.running_mean") * s)
    torch.testing.assert_close(nfn["biases"][2][0], get("10.bias"))


def test_norm_stats_use_the_train_split_only(smoke_zoo, tmp_path):
    zoo = load(smoke_zoo)
    stats = compute_norm_stats(zoo)
    for aid in zoo.arch_ids:
        train = zoo.split("train").arch(aid).weights()
        everyone = zoo.arch(aid).weights()
        lay = zoo.layout_of(aid)
        for t in lay.tensors:
            mean, std = stats.tensors[aid][t.name]
            assert mean == pytest.approx(float(train[:, t.start:t.end].astype(np.float64).mean()), abs=1e-7)
            assert std == pytest.approx(float(train[:, t.start:t.end].astype(np.float64).std()), rel=1e-6)
        t = lay["0.weight"]
        all_std = float(everyone[:, t.start:t.end].std())
        assert stats.tensors[aid]["0.weight"][1] != pytest.approx(all_std, rel=1e-6)
        # normalized flat view over the train split: each tensor has mean 0 and std 1
        x = torch.stack([it["weights"] for it in FlatView(zoo.split("train").arch(aid), normalize=stats)])
        for t in lay.tensors:
            assert x[:, t.start:t.end].mean().item() == pytest.approx(0.0, abs=1e-5)
            assert x[:, t.start:t.end].double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    stats.save(tmp_path / "norm.json")
    again = load_norm_stats(tmp_path / "norm.json")
    assert again.tensors == stats.tensors and again.layers == stats.layers and again.split == "train"


@pytest.mark.parametrize("fixture", ["smoke_zoo", "cnn_zoo"])
def test_permutation_augmentation_preserves_the_function(fixture, request):
    zoo = load(request.getfixturevalue(fixture))
    data = zoo.task_data()
    for aid in zoo.arch_ids:
        arch = zoo.arch(aid)
        lay = arch.layout_of(aid)
        idx = random_permutation_index(lay, torch.Generator().manual_seed(0))
        assert torch.equal(idx.sort().values, torch.arange(lay.size))
        x = torch.from_numpy(arch.input_adapter(aid)(data.x_test[:64]))
        plain, aug = FlatView(arch), FlatView(arch, augment=True, seed=1)
        for i in range(len(arch)):
            w0, w1 = plain[i]["weights"], aug[i]["weights"]
            assert not torch.equal(w0, w1)
            assert torch.equal(w0.sort().values, w1.sort().values)
            mid = arch.model_ids[i]
            with torch.no_grad():
                y0 = load_flat(arch.model(mid), w0, lay)(x)
                y1 = load_flat(arch.model(mid), w1, lay)(x)
            torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
        # a structured view of an augmented model is the permuted view of the original
        nfn_aug = NFNView(arch, augment=True, seed=5)[0]
        assert torch.allclose(nfn_aug["weights"][-1].abs().sum(), NFNView(arch)[0]["weights"][-1].abs().sum())


def test_permutation_index_matches_a_dense_permutation(smoke_zoo):
    zoo = load(smoke_zoo)
    aid = zoo.arch_ids[0]
    lay = zoo.layout_of(aid)
    w = zoo.weights(zoo.arch(aid).model_ids[:1], as_torch=True)[0]
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(k))
             for k, n in enumerate(hidden_sizes(lay))]
    out = w[permutation_index(lay, perms)]
    plan = affine_plan(lay)
    get = lambda v, t: v[t.start:t.end].view(t.shape)  # noqa: E731
    p0 = torch.eye(len(perms[0]))[perms[0]]
    p1 = torch.eye(len(perms[1]))[perms[1]]
    torch.testing.assert_close(get(out, plan[0].weight), p0 @ get(w, plan[0].weight))
    torch.testing.assert_close(get(out, plan[0].bias), p0 @ get(w, plan[0].bias))
    torch.testing.assert_close(get(out, plan[1].weight), p1 @ get(w, plan[1].weight) @ p0.T)
    torch.testing.assert_close(get(out, plan[2].weight), get(w, plan[2].weight) @ p1.T)
    torch.testing.assert_close(get(out, plan[2].bias), get(w, plan[2].bias))


def test_tokens_chunk_and_collate_across_archs(smoke_zoo):
    zoo = load(smoke_zoo)
    view = TokenView(zoo, token_size=16)
    counts = {}
    for i in range(len(view)):
        item = view[i]
        assert item["tokens"].shape[1] == 16
        torch.testing.assert_close(view.decode(item), zoo.weights([item["model_id"]], as_torch=True)[0])
        counts[view.arch[i]] = item["tokens"].shape[0]
    widths = dict(zip(zoo.models["arch_id"], zoo.models["config.arch.width"]))
    for aid, t in counts.items():
        wdt = widths[aid]
        hidden_tokens = math.ceil((wdt + 1) / 16)
        assert t == wdt * math.ceil(41 / 16) + wdt * hidden_tokens + 10 * hidden_tokens
    batch = next(iter(DataLoader(view, batch_size=len(view), collate_fn=pad_tokens)))
    assert batch["tokens"].shape == (len(view), max(counts.values()), 16)
    assert batch["token_mask"].sum(1).tolist() == [counts[a] for a in view.arch]
    assert batch["target"].shape == (len(view),)


def test_default_collate_gives_nfn_batches(smoke_zoo):
    zoo = load(smoke_zoo)
    arch = zoo.arch(zoo.arch_ids[0])
    batch = next(iter(DataLoader(NFNView(arch), batch_size=4)))
    assert [tuple(w.shape[:2]) for w in batch["weights"]] == [(4, 1)] * 3
    assert batch["target"].shape == (4,) and len(batch["model_id"]) == 4
    lazy = NFNView(arch, cache=False)
    torch.testing.assert_close(lazy[3]["weights"][1], NFNView(arch)[3]["weights"][1])


def test_to_pyg(smoke_zoo):
    pytest.importorskip("torch_geometric")
    zoo = load(smoke_zoo)
    item = GraphView(zoo.arch(zoo.arch_ids[0]))[0]
    data = to_pyg(item)
    assert data.num_nodes == item["x"].shape[0] and data.edge_attr.shape == item["edge_attr"].shape


def test_to_pyg_without_torch_geometric(smoke_zoo, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    monkeypatch.setitem(sys.modules, "torch_geometric.data", None)
    zoo = load(smoke_zoo)
    with pytest.raises(ImportError, match="torch_geometric"):
        to_pyg(GraphView(zoo.arch(zoo.arch_ids[0]))[0])


@pytest.mark.parametrize("family,kwargs,shape", [
    ("resnet18", dict(in_channels=1, out_dim=10, width=4, depth=18), (1, 8, 8)),
    ("cnn_s", dict(in_channels=1, out_dim=10, image_size=28), (1, 28, 28)),
])
def test_spec_permutation_index_preserves_the_function(family, kwargs, shape):
    """Nets the layer-chain rule cannot permute (residual streams, flatten over space): traced spec."""
    from zoo.datasets.views import spec_permutation_index
    from zoo.functional import layout_of, to_flat
    from zoo.generators.architectures import build_model

    torch.manual_seed(0)
    net = build_model(family, **kwargs).eval()
    lay = layout_of(net)
    idx = spec_permutation_index(net, torch.Generator().manual_seed(3))
    assert torch.equal(idx.sort().values, torch.arange(lay.size)) and not torch.equal(idx, torch.arange(lay.size))
    params = {k: v[None] for k, v in net.named_parameters()}
    buffers = {k: v[None] for k, v in net.named_buffers() if v.is_floating_point()}
    w = to_flat(params, buffers, lay)[0].detach()
    x = torch.randn(16, *shape)
    with torch.no_grad():
        y0 = net(x)
        y1 = load_flat(build_model(family, **kwargs).eval(), w[idx], lay)(x)
    torch.testing.assert_close(y1, y0, atol=1e-4, rtol=1e-4)


def test_layer_chain_spec_equals_the_traced_spec():
    """The spec read from the layout alone names the same permuted axes as the fx-traced one."""
    from torch import nn

    from zoo.datasets.views import chain_permutation_spec
    from zoo.functional import layout_of
    from zoo.metrics.matching import permutation_spec

    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.Tanh(),
                        nn.Linear(4, 3))
    chain, traced = chain_permutation_spec(layout_of(net)), permutation_spec(net)
    axes = lambda spec: sorted(sorted(v) for v in spec.perm_to_axes.values())  # noqa: E731
    assert axes(chain) == axes(traced) and len(axes(chain)) == 2
    assert sorted(chain.sizes.values()) == sorted(traced.sizes.values()) == [4, 5]
