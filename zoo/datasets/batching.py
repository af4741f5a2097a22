"""Batching a zoo that holds several architectures.

Models of different architectures have tensors of different shapes, so torch's default collate
cannot stack them ("stack expects each tensor to be equal size"). :class:`ArchBatchSampler`
yields batches whose models share one ``arch_id``, and the ``collate_*`` functions stack such a
batch in each view's convention (:data:`COLLATE` maps a view name to its function)::

    loader = DataLoader(view, batch_sampler=ArchBatchSampler(view, 16, shuffle=True), collate_fn=collate_nfn)

Graphs and tokens need no grouping: :func:`collate_graph` joins any graphs into one disjoint
graph (PyTorch Geometric's batching) and :func:`~zoo.datasets.views.pad_tokens` pads token counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, Subset

from .reader import DatasetError, Zoo
from .views import WeightView, pad_tokens, to_pyg


def arch_ids_of(data) -> list[str]:
    """The arch_id of every index of ``data``: a view, a Zoo, a Subset of either, or the ids themselves."""
    if isinstance(data, Subset):
        parent = arch_ids_of(data.dataset)
        return [parent[i] for i in data.indices]
    if isinstance(data, WeightView):
        return list(data.arch)
    if isinstance(data, Zoo):
        return data.models["arch_id"].tolist()
    return [str(a) for a in data]


class ArchBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices that share one arch_id; each model once per epoch.

    With ``shuffle``, models are shuffled within their arch, cut into batches, and the batches
    shuffled across archs; epoch e's order depends only on (``seed``, e), so a run is
    reproducible. The epoch advances by one per iteration, or is set with :meth:`set_epoch` (as
    for DistributedSampler). A ``generator``, if given, is drawn from instead of (seed, epoch).
    ``drop_last`` drops each arch's incomplete last batch. ``num_replicas`` / ``rank``: process
    ``rank`` takes every ``num_replicas``-th batch; all ranks get the same number of batches, the
    leftover batches dropped with ``drop_last``, else repeated from the start (as DistributedSampler pads).
    """

    def __init__(self, data, batch_size: int, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 generator: torch.Generator | None = None, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.generator, self.epoch = seed, generator, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.groups: dict[str, list[int]] = {}
        for i, a in enumerate(arch_ids_of(data)):
            self.groups.setdefault(a, []).append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """Every batch of the current epoch, all ranks' together (does not advance the epoch)."""
        gen = self.generator
        if self.shuffle and gen is None:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
        out = []
        for idx in self.groups.values():
            if self.shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
            out += [idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)
                    if not self.drop_last or s + self.batch_size <= len(idx)]
        if self.shuffle:
            out = [out[j] for j in torch.randperm(len(out), generator=gen).tolist()]
        return out

    def __iter__(self):
        batches = self.batches()
        self.epoch += 1
        r = self.num_replicas
        if self.drop_last:
            batches = batches[:len(batches) // r * r]
        else:
            pad = (r - len(batches) % r) % r  # to a multiple of r
            batches += (batches * r)[:pad]
        return iter(batches[self.rank::r])

    def __len__(self) -> int:
        full = sum(len(idx) // self.batch_size for idx in self.groups.values())
        n = full if self.drop_last else sum(-(-len(idx) // self.batch_size) for idx in self.groups.values())
        return n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)


# ---------------------------------------------------------------- collate functions

def _stack(values: Sequence[torch.Tensor], key: str) -> torch.Tensor:
    """torch.stack, with a message that says how to fix a batch mixing architectures."""
    shapes = sorted({tuple(v.shape) for v in values})
    if len(shapes) > 1:
        raise DatasetError(f"cannot stack {key} of shapes {shapes[0]} and {shapes[1]}: the batch mixes "
                           "architectures; batch with batch_sampler=ArchBatchSampler(view, batch_size)")
    return torch.stack(list(values))


def _ids_and_target(batch: list[dict]) -> dict:
    out = {"model_id": [item["model_id"] for item in batch]}
    if "target" in batch[0]:
        out["target"] = torch.stack([item["target"] for item in batch])
    return out


def _stack_layers(batch: list[dict]) -> dict:
    depths = sorted({len(item["weights"]) for item in batch})
    if len(depths) > 1:
        raise DatasetError(f"cannot stack nets of {depths[0]} and {depths[1]} layers: the batch mixes "
                           "architectures; batch with batch_sampler=ArchBatchSampler(view, batch_size)")
    out = {key: [_stack([item[key][i] for item in batch], f"{key}[{i}]") for i in range(depths[0])]
           for key in ("weights", "biases")}
    return {**out, **_ids_and_target(batch)}


def collate_flat(batch: list[dict]) -> dict:
    """FlatView items of one arch: ``"weights"`` [B, P], ``"model_id"`` list, ``"target"`` [B, ...]."""
    return {"weights": _stack([item["weights"] for item in batch], "weights"), **_ids_and_target(batch)}


def collate_nfn(batch: list[dict]) -> dict:
    """NFNView items of one arch: ``"weights"`` [(B, 1, n_out, n_in, *k)], ``"biases"`` [(B, 1, n_out)],
    NFN's WeightSpaceFeatures layout (``WeightSpaceFeatures(b["weights"], b["biases"])``)."""
    return _stack_layers(batch)


def collate_dws(batch: list[dict]) -> dict:
    """DWSView items of one arch: ``"weights"`` [(B, n_in, n_out, d)], ``"biases"`` [(B, n_out, 1)],
    the (weights, biases) tuples DWSNets take."""
    return _stack_layers(batch)


def collate_graph(batch: list[dict]) -> dict:
    """GraphView items of any archs as one disjoint graph, as PyTorch Geometric batches them.

    Node tensors (``"x"``, ``"node_layer"``) and edge tensors are concatenated, ``"edge_index"``
    shifted by the nodes of the graphs before, ``"edge_attr"`` zero-padded to the widest kernel;
    ``"batch"`` [N] is each node's graph, ``"ptr"`` [B + 1] the node offsets of the graphs.
    """
    sizes = torch.tensor([item["x"].shape[0] for item in batch])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    d = max(item["edge_attr"].shape[1] for item in batch)
    return {"x": torch.cat([item["x"] for item in batch]),
            "node_layer": torch.cat([item["node_layer"] for item in batch]),
            "edge_index": torch.cat([item["edge_index"] + p for item, p in zip(batch, ptr.tolist())], dim=1),
            "edge_attr": torch.cat([F.pad(item["edge_attr"], (0, d - item["edge_attr"].shape[1])) for item in batch]),
            "batch": torch.repeat_interleave(torch.arange(len(batch)), sizes),
            "ptr": ptr, **_ids_and_target(batch)}


def collate_pyg(batch: list[dict]):
    """GraphView items of any archs as a ``torch_geometric.data.Batch`` (needs torch_geometric);
    ``edge_attr`` is zero-padded to the widest kernel first, since PyG concatenates it as is."""
    d = max(item["edge_attr"].shape[1] for item in batch)
    graphs = [to_pyg({**item, "edge_attr": F.pad(item["edge_attr"], (0, d - item["edge_attr"].shape[1]))})
              for item in batch]
    from torch_geometric.data import Batch

    return Batch.from_data_list(graphs)


COLLATE = {"flat": collate_flat, "nfn": collate_nfn, "dws": collate_dws, "tokens": pad_tokens,
           "graph": collate_graph}
