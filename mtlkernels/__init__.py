"""mtlkernels: fused kernels for structured pruning of multi-task networks.

Public API:

- :mod:`mtlkernels.ops`: ``filter_stats``, ``filter_stats_many``, ``channel_contrib``,
  ``gather_channels``, ``gather_many`` (validated, backend-dispatched);
- :mod:`mtlkernels.criteria`: ``score(stats, criterion, ...)``, the pruning criteria as formulas
  over the statistics;
- :mod:`mtlkernels.reference`: the pure-PyTorch references (the tests' oracle).
"""
from . import _backend, reference
from ._backend import available_backends, has_compiled_ops
from .ops import (
    MAX_TASKS,
    FilterStats,
    channel_contrib,
    filter_stats,
    filter_stats_many,
    gather_channels,
    gather_many,
)
from . import ops, criteria  # noqa: E402
from .criteria import CRITERIA, score

__version__ = "0.1.0"

__all__ = [
    "FilterStats", "MAX_TASKS", "filter_stats", "filter_stats_many", "channel_contrib",
    "gather_channels", "gather_many", "score", "CRITERIA", "available_backends",
    "has_compiled_ops", "ops", "criteria", "reference", "__version__",
]
