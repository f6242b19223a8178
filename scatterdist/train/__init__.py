"""Hybrid rotation-equivariant spherical CNN trained on cached scattering coefficients.

Modules: :mod:`~scatterdist.train.harmonics` (real SH basis, dense transforms, Gaunt
coefficients), :mod:`~scatterdist.train.layers`, :mod:`~scatterdist.train.model`
(:class:`HybridCNN`), :mod:`~scatterdist.train.data` (store -> torch, reading only through
:mod:`scatterdist.store`), :mod:`~scatterdist.train.loop` (DDP training, evaluation),
:mod:`~scatterdist.train.checkpoint`, :mod:`~scatterdist.train.rundir` (one trainer per run directory).
"""

from scatterdist.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scatterdist.train.data import (
    CoefficientDataset,
    ShardDistributedSampler,
    read_store_info,
    split_class_counts,
    split_of,
    store_split_counts,
)
from scatterdist.train.layers import (
    InvariantReadout,
    SphericalConv,
    SphericalPointwise,
    TensorProductNonlinearity,
)
from scatterdist.train.loop import TrainConfig, evaluate, train
from scatterdist.train.model import HybridCNN

__all__ = [
    "CheckpointError",
    "CoefficientDataset",
    "HybridCNN",
    "InvariantReadout",
    "ShardDistributedSampler",
    "SphericalConv",
    "SphericalPointwise",
    "TensorProductNonlinearity",
    "TrainConfig",
    "evaluate",
    "load_checkpoint",
    "read_store_info",
    "save_checkpoint",
    "split_class_counts",
    "split_of",
    "store_split_counts",
    "train",
]
