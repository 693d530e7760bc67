"""Structured (filter) pruning of multi-task CNNs with the mtlkernels ops.

Public API: :class:`MultiTaskPruner`, :class:`PruneReport`, :class:`PruningSchedule`,
:func:`count_params_flops`, :func:`total_params_flops`, :func:`save_pruned`,
:func:`load_pruned`, :func:`fine_tune`, :func:`analyse` (the channel-dependency analysis); checkpoint
I/O: :func:`atomic_save`, :func:`atomic_write_text`, :func:`read_checkpoint`,
:func:`remove_stale_temps`, :class:`CheckpointError`.
See the README section "Pruning driver".
"""
from .graph import Analysis, LayerInfo, analyse
from .io import (CheckpointError, apply_architecture, architecture, atomic_save, atomic_write_bytes,
                 atomic_write_text, fingerprint, load_pruned, read_checkpoint, remove_stale_temps,
                 save_pruned)
from .pruner import GRAD_CRITERIA, PRUNER_CRITERIA, WEIGHT_CRITERIA, MultiTaskPruner, PruneReport
from .schedule import PruningSchedule, count_params_flops, fine_tune, total_params_flops

__all__ = [
    "MultiTaskPruner", "PruneReport", "PruningSchedule", "count_params_flops", "total_params_flops",
    "save_pruned", "load_pruned", "fine_tune", "analyse", "Analysis", "LayerInfo", "architecture",
    "apply_architecture", "atomic_save", "atomic_write_bytes", "atomic_write_text", "read_checkpoint",
    "remove_stale_temps", "fingerprint", "CheckpointError", "PRUNER_CRITERIA", "GRAD_CRITERIA",
    "WEIGHT_CRITERIA",
]
