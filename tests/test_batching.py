"""Batching a mixed-architecture zoo: one arch per batch, each model once per epoch, seeded
shuffles, collated shapes per view, and the docs/views.md snippets run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from zoo.datasets import (
    COLLATE,
    VIEWS,
    ArchBatchSampler,
    DatasetError,
    FlatView,
    GraphView,
    NFNView,
    arch_ids_of,
    collate_flat,
    collate_graph,
    collate_nfn,
    load,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "views.md"
MIXED_SETS = ['phase.axes=[{name="capacity", key="arch.width", values=[8, 16]}, '
              '{name="depth", key="arch.depth", values=[1, 2]}]',
              "phase.seeds=[0,1,2]", "train.steps=10", "train.checkpoints=1", "metrics.hessian=false",
              "metrics.spectral=false", "metrics.connectivity=false", "metrics.cka=false", 'metrics.lmc="none"']


@pytest.fixture(scope="session")
def mixed_zoo(tmp_path_factory, data_root) -> Path:
    """12 tiny MLPs of 4 archs: width {8, 16} x depth {1, 2} x 3 seeds."""
    from zoo.pipeline import build
    from zoo.spec import load_spec

    root = tmp_path_factory.getbasetemp() / "zoo-mixed"
    if not (root / "zoo.json").exists():
        build(load_spec("smoke", MIXED_SETS), root, progress=False, data_root=data_root)
    return root


@pytest.fixture(scope="session")
def zoo(mixed_zoo):
    """The zoo with its archs interleaved (seed-major), so a sampler must regroup them."""
    z = load(mixed_zoo)
    return z.subset(z.models.sort_values(["seed", "arch_id"])["model_id"])


def _dims(zoo, model_id: str) -> list[tuple[int, int]]:
    """(n_out, n_in) of every linear layer of an MLP of the zoo on MNIST-1D (40 in, 10 out)."""
    cfg = zoo.config(model_id)
    w, d = cfg["arch.width"], cfg["arch.depth"]
    return [(w, 40)] + [(w, w)] * (d - 1) + [(10, w)]


def _epoch(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_the_fixture_mixes_four_archs(zoo):
    assert len(zoo) == 12 and len(zoo.arch_ids) == 4
    archs = arch_ids_of(zoo)
    assert archs[:4] == zoo.arch_ids  # interleaved: one model of every arch, then again


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_batch_has_one_arch_and_every_model_appears_once(zoo, shuffle, drop_last):
    view = FlatView(zoo)
    sampler = ArchBatchSampler(view, 2, shuffle=shuffle, drop_last=drop_last, seed=3)
    for _ in range(2):
        batches = _epoch(sampler)
        assert len(batches) == len(sampler) == (4 if drop_last else 8)  # 3 models per arch: 2 + 1
        assert all(len({view.arch[i] for i in b}) == 1 for b in batches)
        seen = sorted(i for b in batches for i in b)
        assert len(seen) == len(set(seen))
        if drop_last:
            assert all(len(b) == 2 for b in batches) and len(seen) == 8
        else:
            assert seen == list(range(len(view)))


def test_shuffling_is_seeded_and_reproducible(zoo):
    a, b = ArchBatchSampler(zoo, 2, shuffle=True, seed=7), ArchBatchSampler(zoo, 2, shuffle=True, seed=7)
    a0, a1 = _epoch(a), _epoch(a)
    assert a0 == _epoch(b) and a1 == _epoch(b)  # the same seed gives the same epochs
    assert a0 != a1  # the epoch advances each pass
    assert _epoch(ArchBatchSampler(zoo, 2, shuffle=True, seed=8)) != a0
    resumed = ArchBatchSampler(zoo, 2, shuffle=True, seed=7)
    resumed.set_epoch(1)
    assert _epoch(resumed) == a1  # set_epoch, as with DistributedSampler
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    assert _epoch(ArchBatchSampler(zoo, 2, shuffle=True, generator=g())) == \
        _epoch(ArchBatchSampler(zoo, 2, shuffle=True, generator=g()))
    plain = _epoch(ArchBatchSampler(zoo, 2))
    archs = arch_ids_of(zoo)
    assert plain[:2] == [[0, 4], [8]] and archs[0] == archs[4] == archs[8]  # in view order, no shuffle
    assert plain == _epoch(ArchBatchSampler(zoo, 2))


@pytest.mark.parametrize("drop_last", [False, True])
def test_replicas_split_one_epoch_order(zoo, drop_last):
    whole = ArchBatchSampler(zoo, 2, shuffle=True, seed=1, drop_last=drop_last).batches()
    ranks = [ArchBatchSampler(zoo, 2, shuffle=True, seed=1, drop_last=drop_last, num_replicas=3, rank=r)
             for r in range(3)]
    parts = [_epoch(s) for s in ranks]
    assert all(len(p) == len(s) for p, s in zip(parts, ranks))
    assert len({len(p) for p in parts}) == 1
    got = [b for p in parts for b in p]
    if drop_last:  # 4 full batches, 3 ranks: one each, the last batch dropped
        assert len(got) == 3 and all(b in whole for b in got)
    else:  # 8 batches padded to 9 with the first one
        assert sorted(map(tuple, got)) == sorted(map(tuple, whole + whole[:1]))


def test_arch_ids_of_accepts_views_zoos_subsets_and_lists(zoo):
    view = NFNView(zoo)
    archs = arch_ids_of(zoo)
    assert arch_ids_of(view) == archs and arch_ids_of(list(archs)) == archs
    assert arch_ids_of(Subset(view, [5, 1])) == [archs[5], archs[1]]
    sub = _epoch(ArchBatchSampler(Subset(view, [0, 4, 1]), 2))
    assert sub == [[0, 1], [2]]  # Subset indices 0 and 1 (models 0 and 4) share an arch
    with pytest.raises(ValueError, match="batch_size"):
        ArchBatchSampler(zoo, 0)
    with pytest.raises(ValueError, match="rank"):
        ArchBatchSampler(zoo, 2, num_replicas=2, rank=2)


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_collated_batches_have_the_expected_shapes(zoo, name):
    view = VIEWS[name](zoo)
    loader = DataLoader(view, batch_sampler=ArchBatchSampler(view, 2, shuffle=True, seed=0),
                        collate_fn=COLLATE[name])
    n = 0
    for batch in loader:
        ids = batch["model_id"]
        b, dims = len(ids), _dims(zoo, ids[0])
        n += b
        assert batch["target"].shape == (b,)
        assert torch.equal(batch["target"], torch.stack([view[view.ids.index(m)]["target"] for m in ids]))
        first = view[view.ids.index(ids[0])]
        if name == "flat":
            assert batch["weights"].shape == (b, sum(o * i + o for o, i in dims))
            assert torch.equal(batch["weights"][0], first["weights"])
        elif name == "nfn":
            assert [tuple(w.shape) for w in batch["weights"]] == [(b, 1, o, i) for o, i in dims]
            assert [tuple(x.shape) for x in batch["biases"]] == [(b, 1, o) for o, _ in dims]
            assert torch.equal(batch["weights"][-1][0], first["weights"][-1])
        elif name == "dws":
            assert [tuple(w.shape) for w in batch["weights"]] == [(b, i, o, 1) for o, i in dims]
            assert [tuple(x.shape) for x in batch["biases"]] == [(b, o, 1) for o, _ in dims]
            assert torch.equal(batch["biases"][0][0], first["biases"][0])
        elif name == "tokens":
            assert batch["tokens"].shape == (b, sum(o for o, _ in dims), view.token_size)
            assert batch["token_mask"].all()  # one arch: no padding of token counts
        elif name == "graph":
            nodes = 40 + sum(o for o, _ in dims)
            assert batch["x"].shape == (b * nodes, 1) and batch["ptr"].tolist() == [k * nodes for k in range(b + 1)]
            assert batch["edge_index"].shape == (2, b * sum(o * i for o, i in dims))
    assert n == len(view)


def test_graphs_of_different_archs_collate_into_one_disjoint_graph(zoo):
    view = GraphView(zoo)
    items = [view[i] for i in range(5)]  # four archs, and the first arch twice
    batch = collate_graph(items)
    ptr = batch["ptr"].tolist()
    assert ptr == [0] + torch.tensor([it["x"].shape[0] for it in items]).cumsum(0).tolist()
    assert batch["batch"].bincount().tolist() == [it["x"].shape[0] for it in items]
    e0 = 0
    for k, it in enumerate(items):
        e = it["edge_index"].shape[1]
        assert torch.equal(batch["x"][ptr[k]:ptr[k + 1]], it["x"])
        assert torch.equal(batch["node_layer"][ptr[k]:ptr[k + 1]], it["node_layer"])
        assert torch.equal(batch["edge_index"][:, e0:e0 + e], it["edge_index"] + ptr[k])
        assert torch.equal(batch["edge_attr"][e0:e0 + e], it["edge_attr"])
        e0 += e
    assert e0 == batch["edge_index"].shape[1] and batch["model_id"] == [it["model_id"] for it in items]
    # a plain shuffled DataLoader over every arch works for graphs
    loader = DataLoader(view, batch_size=5, shuffle=True, collate_fn=collate_graph)
    assert sum(len(b["model_id"]) for b in loader) == len(view)


def test_mixed_batches_fail_with_a_fix(zoo):
    with pytest.raises(DatasetError, match="ArchBatchSampler"):
        next(iter(DataLoader(NFNView(zoo), batch_size=len(zoo), collate_fn=collate_nfn)))
    with pytest.raises(DatasetError, match="ArchBatchSampler"):
        collate_flat([FlatView(zoo)[i] for i in range(2)])
    same_depth = NFNView(zoo.subset(zoo.models["config.arch.depth"] == 2))
    with pytest.raises(DatasetError, match=r"shapes .*ArchBatchSampler"):
        collate_nfn([same_depth[i] for i in range(len(same_depth))])


def test_dataloader_with_workers_and_lazy_reads(zoo):
    view = NFNView(zoo, cache=False)
    loader = DataLoader(view, batch_sampler=ArchBatchSampler(view, 4, shuffle=True), collate_fn=collate_nfn,
                        num_workers=1)
    ids = [m for batch in loader for m in batch["model_id"]]
    assert sorted(ids) == sorted(view.ids)


def test_collate_pyg_matches_collate_graph(zoo):
    pytest.importorskip("torch_geometric")
    from zoo.datasets import collate_pyg

    view = GraphView(zoo)
    items = [view[i] for i in range(5)]
    ours, pyg = collate_graph(items), collate_pyg(items)
    for key in ("x", "edge_index", "edge_attr", "node_layer", "batch", "ptr"):
        assert torch.equal(getattr(pyg, key), ours[key]), key
    assert torch.equal(pyg.y, ours["target"]) and pyg.num_graphs == 5


def test_collate_nfn_feeds_nfn_layers(zoo):
    pytest.importorskip("nfn")
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
    from nfn.layers import NPLinear

    view = NFNView(zoo)
    batch = next(iter(DataLoader(view, batch_sampler=ArchBatchSampler(view, 3), collate_fn=collate_nfn)))
    wsfeat = WeightSpaceFeatures(batch["weights"], batch["biases"])
    spec = network_spec_from_wsfeat(wsfeat)
    out = NPLinear(spec, 1, 4)(wsfeat)
    assert [tuple(w.shape) for w in out.weights] == [(3, 4, *w.shape[2:]) for w in batch["weights"]]


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


@pytest.mark.parametrize("k", range(len(_snippets())))
def test_docs_snippets_run(mixed_zoo, k):
    code = _snippets()[k]
    for package in ("nfn", "torch_geometric"):
        if re.search(rf"^from {package}\b", code, flags=re.M):
            pytest.importorskip(package)
    exec(compile(code.replace('"zoo-out"', repr(str(mixed_zoo))), f"{DOCS.name}[{k}]", "exec"), {})
