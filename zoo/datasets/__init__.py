"""The published weight-space datasets: writer (build side), reader, torch views, verify, export."""

from .batching import (
    COLLATE,
    ArchBatchSampler,
    arch_ids_of,
    collate_dws,
    collate_flat,
    collate_graph,
    collate_nfn,
    collate_pyg,
)
from .reader import DatasetError, WeightBatch, Zoo, cell_folds, load, split_by_cells
from .verify import verify
from .views import (
    VIEWS,
    DWSView,
    FlatView,
    GraphView,
    NFNView,
    NormStats,
    TokenView,
    WeightView,
    affine_layers,
    compute_norm_stats,
    layers_to_flat,
    load_norm_stats,
    pad_tokens,
    permutation_index,
    random_permutation_index,
    to_pyg,
)

__all__ = ["DatasetError", "WeightBatch", "Zoo", "load", "split_by_cells", "cell_folds", "verify", "VIEWS",
           "DWSView", "FlatView", "GraphView", "NFNView", "NormStats", "TokenView", "WeightView", "affine_layers",
           "compute_norm_stats", "layers_to_flat", "load_norm_stats", "pad_tokens", "permutation_index",
           "random_permutation_index", "to_pyg", "COLLATE", "ArchBatchSampler", "arch_ids_of", "collate_dws",
           "collate_flat", "collate_graph", "collate_nfn", "collate_pyg"]
