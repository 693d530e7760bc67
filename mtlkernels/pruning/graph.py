"""Channel-dependency analysis of a multi-task CNN by tracing it with :mod:`torch.fx`.

Every output channel of every conv / linear layer gets a *label*; labels flow through the traced
graph position by position along dim 1 (the channel dim), and operations that tie channels
together *unite* labels (a union-find over labels):

* conv / linear (``groups == 1``): consume the labels of their input (their weight's input dim is
  shrunk where a label is pruned) and produce fresh labels, one per output channel;
* BatchNorm / InstanceNorm(affine) / PReLU(C) / depthwise conv (``groups == in == out``): pass
  their input labels through and own one parameter slice per channel;
* element-wise ops (ReLU & co, dropout, pooling, interpolation, reductions over spatial dims,
  ``contiguous``...): pass labels through;
* ``+``, ``-``, ``*``, ``/`` between tensors with the same channel count (residual additions, SE
  gating): unite the operands position by position, so all members of a residual stage form one
  group of coupled channels;
* ``torch.cat`` along dim 1: concatenates the label lists (channel ranges, e.g. ASPP heads); along
  another dim: unites the operands;
* ``flatten`` / ``view`` / ``reshape`` to ``[N, C*H*W]``: each label is repeated ``H*W`` times, so a
  following linear layer loses a block of input features per pruned channel.

A special label ``BLOCKED`` (0) marks channels that must never be pruned: the network input, every
tensor that reaches the model's output (task output layers keep their size), the output of excluded
layers, and the inputs/outputs of anything the analysis does not understand (reported by name in
:attr:`Analysis.unsupported`). A label united with ``BLOCKED`` is blocked, so an unknown op can only
make the driver prune *less*, never mis-prune. As a last safety net, every traced tensor's label
count is checked against its real channel count (from :class:`torch.fx.passes.shape_prop.ShapeProp`
on the example inputs); a mismatch blocks the op's inputs and output.

The result, :class:`Analysis`, lists per module which positions of which tensor dims belong to which
prunable *channel group* (a connected set of labels).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .flow import BLOCKED, PASS_MODULES, Flow, _UF
from .kinds import by_name, is_leaf

__all__ = ["Analysis", "analyse", "LayerInfo"]

@dataclass
class LayerInfo:
    """One module the driver shrinks.

    ``kind``: a :mod:`.kinds` name: ``"conv"``, ``"convT"``, ``"linear"`` (produce output channels
    and consume input channels), ``"dwconv"``, ``"norm"``, ``"groupnorm"``, ``"layernorm"``,
    ``"prelu"``, ``"scale"`` (one slice per channel of their input).
    ``out_groups``: ``[C_out]`` group id of every output channel (``-1`` = never pruned).
    ``in_groups``: ``[C_in]`` group id of every input position (conv / linear only; ``None``
    otherwise). ``out_dim`` / ``in_dim``: the weight dims that hold them.
    """

    name: str
    kind: str
    out_groups: torch.Tensor
    in_groups: Optional[torch.Tensor] = None
    out_dim: int = 0
    in_dim: int = 1
    excluded: bool = False
    #: the module that owns the tensors (``name`` itself, or the owner of a layer-scale parameter)
    module: str = ""
    #: (attribute, role) of the owned tensors (default: the kind's)
    tensors: Tuple[Tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        self.module = self.module or self.name
        self.tensors = tuple(self.tensors) or by_name(self.kind).tensors

    @property
    def produces(self) -> bool:
        return by_name(self.kind).flow == "produce"


@dataclass
class Analysis:
    layers: Dict[str, LayerInfo]
    num_groups: int
    unsupported: List[str] = field(default_factory=list)
    #: group id -> list of (layer name, count of its out channels in the group)
    group_members: List[List[Tuple[str, int]]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.num_groups} prunable channel groups"]
        for name, info in self.layers.items():
            ng = int((info.out_groups >= 0).sum())
            lines.append(f"  {name:40s} {info.kind:7s} out={info.out_groups.numel():5d} prunable={ng}")
        if self.unsupported:
            lines.append("unsupported (left unpruned): " + ", ".join(self.unsupported))
        return "\n".join(lines)


def _shape_prop(gm: torch.fx.GraphModule, inputs, fake: bool) -> None:
    """Shapes of every node. Default: a real forward of ONE sample (channel counts do not depend on
    the batch; under FakeTensorMode the copy of the module into fake tensors alone cost more than
    that forward); the whole example batch if one sample fails; ``fake=True`` tries FakeTensorMode
    first (no real compute at all, for models too large to run a sample)."""
    if fake:
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_non_fake_inputs=True)
            fake_inputs = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in inputs]
            ShapeProp(gm, fake_mode=mode).propagate(*fake_inputs)
            return
        except Exception as exc:  # pragma: no cover - fall back to a real forward
            if os.environ.get("MTLKERNELS_PRUNING_DEBUG"):
                print(f"fake shape propagation failed: {exc!r}")
            _clear_meta(gm)
    one = tuple(t[:1] if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] > 1 else t for t in inputs)
    if any(a is not b for a, b in zip(one, inputs)):
        try:
            ShapeProp(gm).propagate(*one)
            return
        except Exception:  # e.g. a model that needs its batch (reshapes by a fixed batch size)
            _clear_meta(gm)
    ShapeProp(gm).propagate(*inputs)


def _clear_meta(gm: torch.fx.GraphModule) -> None:
    for n in gm.graph.nodes:
        n.meta.pop("tensor_meta", None)


def analyse(
    model: nn.Module,
    example_inputs,
    exclude: Sequence[str] = (),
    *,
    tracer_kwargs: Optional[dict] = None,
    fake: bool = False,
) -> Analysis:
    """Trace ``model`` and find its prunable channel groups (see the module docstring).

    Shapes come from :class:`ShapeProp` on one sample of ``example_inputs`` (eval mode, no grad;
    the whole batch if one sample fails), or under a ``FakeTensorMode`` with ``fake=True``."""
    try:
        gm = _trace(model, tracer_kwargs)
    except Exception as exc:  # pragma: no cover - depends on the user's model
        raise RuntimeError(
            "mtlkernels.pruning: torch.fx.symbolic_trace could not trace the model "
            f"({type(exc).__name__}: {exc}). The dependency analysis needs an fx-traceable forward "
            "(no data-dependent Python control flow); wrap untraceable parts in a leaf module."
        ) from exc
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    dev = next((p.device for p in model.parameters()), None)
    if dev is not None:  # the model may have moved since the inputs were made
        inputs = tuple(t.to(dev) if isinstance(t, torch.Tensor) and t.device != dev else t for t in inputs)
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            _shape_prop(gm, inputs, fake)
    finally:
        for m, t in was_training.items():
            m.training = t

    flow = Flow(dict(model.named_modules()), exclude)
    flow.run(gm)
    return _finish(flow, set(exclude))


def _finish(flow: Flow, exclude) -> Analysis:
    """Number the groups and build the per-layer views of the analysis."""
    kinds = flow.kinds
    produce = {n: by_name(k).flow == "produce" for n, k in kinds.items()}
    lists = [(n, flow.out_labels[n] if produce[n] else flow.pass_labels[n]) for n in flow.order]
    lists += [(n, flow.in_labels[n]) for n in flow.order if n in flow.in_labels]
    ids, num_groups = _number_groups(flow.uf, [labels for _, labels in lists])
    layers: Dict[str, LayerInfo] = {}
    for name, g in zip(flow.order, ids):
        kind = by_name(kinds[name])
        module, tensors = flow.owner[name]
        layers[name] = LayerInfo(name, kind.name, g, None, kind.out_dim, kind.in_dim,
                                 name in exclude or module in exclude, module, tensors)
    for (name, _), g in zip(lists[len(flow.order):], ids[len(flow.order):]):
        layers[name].in_groups = g
    members: List[List[Tuple[str, int]]] = [[] for _ in range(num_groups)]
    for name, info in layers.items():
        og = info.out_groups[info.out_groups >= 0]
        if og.numel():
            cnt = torch.bincount(og, minlength=num_groups)
            nz = torch.nonzero(cnt).flatten()
            for g, c in zip(nz.tolist(), cnt[nz].tolist()):
                members[g].append((name, c))
    # groups that are consumed but produced by no layer cannot exist (labels come from producers)
    return Analysis(layers, num_groups, flow.unsupported, members)


def _number_groups(uf: _UF, lists: List[List[int]]) -> Tuple[List[torch.Tensor], int]:
    """Group id of every label of every list (-1 where BLOCKED): the union-find roots, numbered by
    first appearance over the lists in order (deterministic), in one vectorised pass."""
    n = len(uf.parent)
    roots = torch.tensor([uf.find(i) for i in range(n)], dtype=torch.int64)
    sizes = [len(l) for l in lists]
    flat = torch.tensor([l for labels in lists for l in labels], dtype=torch.int64)
    r = roots[flat] if flat.numel() else flat
    valid = r != roots[BLOCKED]
    pos = torch.arange(r.numel())
    first = torch.full((n,), r.numel(), dtype=torch.int64).scatter_reduce(0, r[valid], pos[valid], "amin")
    used = torch.nonzero(first < r.numel()).flatten()
    gid = torch.full((n,), -1, dtype=torch.int64)
    gid[used[torch.argsort(first[used])]] = torch.arange(used.numel())
    out = torch.where(valid, gid[r], torch.full_like(r, -1))
    return list(out.split(sizes)), int(used.numel())


class _Tracer(torch.fx.Tracer):
    """Keeps every module of a registered kind a leaf, subclasses included (fx only keeps modules
    defined in torch.nn: it would trace into timm's BatchNormAct2d or a user's BatchNorm subclass,
    whose input-dim check cannot run on a Proxy), and the channel-preserving modules."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m) or isinstance(m, PASS_MODULES) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, tracer_kwargs: Optional[dict]) -> torch.fx.GraphModule:
    """Traced in eval mode: train-only branches (stochastic depth, drop-path) are channel-preserving
    and often untraceable (they size random noise from a Proxy); eval mode skips them."""
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        tracer = _Tracer(**(tracer_kwargs or {}))
        graph = tracer.trace(model)
        return torch.fx.GraphModule(tracer.root, graph, model.__class__.__name__)
    finally:
        for m, t in was_training.items():
            m.training = t


