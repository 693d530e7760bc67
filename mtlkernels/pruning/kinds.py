"""The registry of prunable layer kinds: the one place that says, per kind, how a module is
matched, how channel labels flow through it, which tensors it owns in which role, which attributes
compaction changes and what ``architecture()`` records.

The dependency analysis (:mod:`.graph`), compaction and masking (:mod:`.pruner`) and save/load
(:mod:`.io`) all read this table; adding a kind is one entry in :data:`KINDS`. Matching is by
``isinstance`` (first entry wins), so subclasses of known modules -- timm's ``BatchNormAct2d``, a
user's ``class MyBN(nn.BatchNorm2d)`` -- are handled as their base kind, and the tracer keeps them as
leaves (never traces into their ``forward``).

Label flows:

* ``produce``: consumes the labels of its input along the weight's ``in_dim`` and makes fresh
  labels for its output channels (conv, linear). Grouped convs keep their groups equal: input
  position ``j`` of every group is one label (so a pruned position leaves every group), output
  position ``j`` of every group is one label, and the weight's input dim holds one group's
  positions.
* ``pass``: one slice per channel of its input (norms, PReLU, depthwise convs: a depthwise conv with
  channel multiplier ``m`` repeats each input label ``m`` times). GroupNorm ties the channels of each
  of its groups, so whole norm groups are pruned.

Tensor roles: ``"w"`` a weight with output channels on ``out_dim`` and input channels on
``in_dim``; ``"out"`` a per-channel tensor along dim 0 (bias, gamma, running stats, depthwise
filters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

__all__ = ["LayerKind", "KINDS", "kind_of", "KIND_NAMES", "is_leaf"]

_Conv = nn.modules.conv._ConvNd
_ConvT = nn.modules.conv._ConvTransposeNd


@dataclass(frozen=True)
class LayerKind:
    """One kind of prunable layer (see the module docstring)."""

    name: str
    classes: Tuple[type, ...]
    flow: str                                       # "produce" | "pass"
    tensors: Tuple[Tuple[str, str], ...]            # (attribute, role "w" | "out")
    record: Tuple[str, ...]                         # attributes architecture() saves
    resize: Callable[[nn.Module, int], None]        # set ``record`` after compaction (new out count)
    when: Callable[[nn.Module], bool] = lambda m: True
    out_dim: int = 0
    in_dim: int = 1
    #: whether the tracer keeps the module a leaf (else it traces into its forward)
    leaf: Callable[[nn.Module], bool] = lambda m: True

    def matches(self, m: nn.Module) -> bool:
        return isinstance(m, self.classes) and self.when(m)


def _groups(m) -> int:
    return int(getattr(m, "groups", 1))


def _is_depthwise(m) -> bool:
    """groups == in_channels (each input channel its own group), any channel multiplier."""
    return (not isinstance(m, _ConvT) and _groups(m) == m.in_channels
            and m.out_channels % m.in_channels == 0 and (_groups(m) > 1 or m.out_channels == 1))


def _resize_conv(m, n_out) -> None:
    m.out_channels = m.weight.shape[0]
    m.in_channels = m.weight.shape[1] * m.groups


def _resize_convT(m, n_out) -> None:
    m.in_channels = m.weight.shape[0]
    m.out_channels = m.weight.shape[1] * m.groups


def _resize_dw(m, n_out) -> None:
    mult = m.out_channels // m.in_channels       # the channel multiplier never changes
    m.out_channels = n_out
    m.in_channels = m.groups = n_out // mult


def _resize_linear(m, n_out) -> None:
    m.out_features, m.in_features = m.weight.shape


def _resize_norm(m, n_out) -> None:
    m.num_features = n_out


def _resize_groupnorm(m, n_out) -> None:
    per = m.num_channels // m.num_groups          # channels per norm group never change
    m.num_channels = n_out
    m.num_groups = n_out // per


def _resize_prelu(m, n_out) -> None:
    m.num_parameters = n_out


def _resize_layernorm(m, n_out) -> None:
    m.normalized_shape = (n_out,)


def _plain_forward(m) -> bool:
    """A LayerNorm subclass that overrides forward (ConvNeXt's LayerNorm2d permutes around
    F.layer_norm) is traced into, so the analysis sees which dim it normalises."""
    return type(m).forward is nn.LayerNorm.forward


_W = (("weight", "w"), ("bias", "out"))
_PER = (("weight", "out"), ("bias", "out"))
KINDS: Tuple[LayerKind, ...] = (
    LayerKind("dwconv", (_Conv,), "pass", _PER, ("in_channels", "out_channels", "groups"), _resize_dw,
              when=_is_depthwise),
    LayerKind("convT", (_ConvT,), "produce", _W, ("in_channels", "out_channels", "groups"), _resize_convT,
              out_dim=1, in_dim=0),
    LayerKind("conv", (_Conv,), "produce", _W, ("in_channels", "out_channels", "groups"), _resize_conv),
    LayerKind("linear", (nn.Linear,), "produce", _W, ("in_features", "out_features"), _resize_linear),
    LayerKind("norm", (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm), "pass",
              _PER + (("running_mean", "out"), ("running_var", "out")), ("num_features",), _resize_norm),
    LayerKind("groupnorm", (nn.GroupNorm,), "pass", _PER, ("num_groups", "num_channels"), _resize_groupnorm),
    LayerKind("prelu", (nn.PReLU,), "pass", (("weight", "out"),), ("num_parameters",), _resize_prelu,
              when=lambda m: m.num_parameters > 1),
    LayerKind("layernorm", (nn.LayerNorm,), "pass", _PER, ("normalized_shape",), _resize_layernorm,
              when=lambda m: len(m.normalized_shape) == 1, leaf=_plain_forward),
    # a per-channel parameter used in the graph (layer scale): matched by the analysis, not by class
    LayerKind("scale", (), "pass", (), (), lambda m, n: None),
)
KIND_NAMES = tuple(k.name for k in KINDS)
_BY_NAME: Dict[str, LayerKind] = {k.name: k for k in KINDS}


def kind_of(m: nn.Module) -> Optional[LayerKind]:
    """The registry entry of ``m`` (first match), or None."""
    for k in KINDS:
        if k.matches(m):
            return k
    return None


def by_name(name: str) -> LayerKind:
    return _BY_NAME[name]


def is_leaf(m: nn.Module) -> bool:
    """Whether the tracer keeps ``m`` a leaf: a module of a registered kind (subclasses too)."""
    k = kind_of(m)
    return k is not None and k.leaf(m)


def recorded_attributes() -> Sequence[str]:
    """Every attribute a compaction may change (save/load records them, fingerprints skip them)."""
    seen: List[str] = []
    for k in KINDS:
        seen.extend(a for a in k.record if a not in seen)
    return seen
