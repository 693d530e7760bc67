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

import math
import os
import operator
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .kinds import LayerKind, by_name, kind_of, leaf_classes

__all__ = ["Analysis", "analyse", "LayerInfo"]

BLOCKED = 0

_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
_PASS_FUNCS = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.abs,
    torch.neg, torch.exp, torch.sqrt, torch.square,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest, F.pad,
    operator.neg, operator.pos,
}
# channel-preserving functions of libraries this package does not import (fx-wrapped leaves)
_PASS_FUNC_NAMES = {"stochastic_depth", "drop_path", "drop_block_2d", "drop_block_fast_2d"}
_PASS_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "detach",
    "float", "double", "half", "bfloat16", "to", "type_as", "clamp", "clamp_", "clip", "abs",
    "neg", "exp", "sqrt", "square", "requires_grad_",
}
_BINARY_FUNCS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_QUERY_METHODS = {"size", "dim", "numel", "ndimension"}
_QUERY_FUNCS = {getattr, operator.getitem, len}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}


class _UF:
    def __init__(self) -> None:
        self.parent: List[int] = [0]  # label 0 = BLOCKED

    def new(self, n: int) -> List[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra == BLOCKED or (rb != BLOCKED and rb < ra):
            ra, rb = rb, ra  # keep BLOCKED (and the smaller label) as root
        self.parent[rb] = ra


@dataclass
class LayerInfo:
    """One module the driver shrinks.

    ``kind``: ``"conv"``, ``"convT"``, ``"linear"`` (produce output channels and consume input
    channels), ``"dwconv"``, ``"norm"``, ``"prelu"`` (one slice per channel of their input).
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


def _tensor_meta(node: torch.fx.Node):
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        return None
    return tuple(tm.shape)


def _flat_nodes(a) -> List[torch.fx.Node]:
    out: List[torch.fx.Node] = []
    torch.fx.node.map_arg(a, lambda n: out.append(n))
    return out


def _norm_dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


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

    exclude = set(exclude)
    modules = dict(model.named_modules())
    uf = _UF()
    env: Dict[torch.fx.Node, Optional[List[int]]] = {}
    unsupported: List[str] = []
    out_labels: Dict[str, List[int]] = {}      # producers: labels of output channels
    in_labels: Dict[str, List[int]] = {}       # consumers: labels of input positions
    pass_labels: Dict[str, List[int]] = {}     # per-channel modules
    kinds: Dict[str, str] = {}
    order: List[str] = []
    shared: Dict[str, List[str]] = {}          # layer -> its tensors read outside the layer

    def labels_of(a) -> Optional[List[int]]:
        return env.get(a) if isinstance(a, torch.fx.Node) else None

    def block(labels: Optional[List[int]]) -> None:
        if labels:
            for l in labels:
                uf.union(BLOCKED, l)

    def tie(a: List[int], b: List[int]) -> None:
        for x, y in zip(a, b):
            uf.union(x, y)

    def record(mapping: Dict[str, List[int]], name: str, labels: List[int]) -> None:
        if name in mapping:  # module called more than once: its slices are shared
            tie(mapping[name], labels)
        else:
            mapping[name] = list(labels)

    def unknown(node: torch.fx.Node, what: str) -> Optional[List[int]]:
        if what not in unsupported:
            unsupported.append(what)
        for a in _flat_nodes((node.args, node.kwargs)):
            block(env.get(a))
        shape = _tensor_meta(node)
        return [BLOCKED] * shape[1] if shape is not None and len(shape) >= 2 else None

    def first_tensor_arg(node):
        return node.args[0] if node.args else next(iter(node.kwargs.values()), None)

    def layer_flow(name: str, mod: nn.Module, kind: LayerKind, x: List[int]) -> List[int]:
        """Labels of a registered layer's output (see :mod:`.kinds`), recording what it owns."""
        if name not in kinds:
            kinds[name] = kind.name
            order.append(name)
        g = getattr(mod, "groups", 1) if kind.name == "conv" else 1
        if kind.flow == "produce":
            n_in = len(x) // g
            for k in range(1, g):  # a grouped conv: input position j of every group is one label
                tie(x[:n_in], x[k * n_in:(k + 1) * n_in])
            record(in_labels, name, x[:n_in])
            if name not in out_labels:
                n_out = _out_channels(mod) // g
                fresh = uf.new(n_out)
                out_labels[name] = [fresh[j] for _ in range(g) for j in range(n_out)]
            return list(out_labels[name])
        if kind.name == "groupnorm":
            per = len(x) // mod.num_groups
            for k in range(mod.num_groups):  # whole norm groups: their channels go together
                tie([x[k * per]] * (per - 1), x[k * per + 1:(k + 1) * per])
        res = list(x)
        if kind.name == "dwconv":
            res = [c for c in x for _ in range(mod.out_channels // mod.in_channels)]
        record(pass_labels, name, res)
        return res

    for node in gm.graph.nodes:
        shape = _tensor_meta(node)
        res: Optional[List[int]] = None
        if node.op == "placeholder":
            res = [BLOCKED] * shape[1] if shape is not None and len(shape) >= 2 else None
        elif node.op == "get_attr":
            owner, _, attr = str(node.target).rpartition(".")
            k = kind_of(modules[owner]) if owner in modules else None
            if k is not None and attr in dict(k.tensors):
                # used outside its module: its channels cannot be shrunk safely
                shared.setdefault(owner, []).append(f"{owner}.{attr}")
            res = [BLOCKED] * shape[1] if shape is not None and len(shape) >= 2 else None
        elif node.op == "output":
            for a in _flat_nodes(node.args):
                block(env.get(a))
            continue
        elif node.op == "call_module":
            name = str(node.target)
            mod = modules[name]
            x = labels_of(first_tensor_arg(node))
            in_shape = _tensor_meta(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
            kind = kind_of(mod)
            if kind is not None and x is not None and _accepts(kind, mod, in_shape, len(x)):
                res = layer_flow(name, mod, kind, x)
                if name in exclude:
                    block(res)
            elif isinstance(mod, _PASS_MODULES) and x is not None:
                res = list(x)
            elif isinstance(mod, nn.Flatten) and x is not None and in_shape is not None:
                res = _reshape(x, in_shape, shape)
                if res is None:
                    res = unknown(node, f"{name} ({type(mod).__name__})")
            else:
                res = unknown(node, f"{name} ({type(mod).__name__})")
        else:  # call_function / call_method
            tgt = node.target
            is_m = node.op == "call_method"
            x = labels_of(node.args[0]) if node.args else None
            tname = tgt if is_m else getattr(tgt, "__name__", str(tgt))
            ins = [env.get(a) for a in _flat_nodes((node.args, node.kwargs))]
            if shape is None and _tuple_shapes(node) is None and all(l is None for l in ins):
                env[node] = None  # arithmetic on sizes, comparisons, asserts: no channel flows
                continue
            if not is_m and tgt is operator.getitem and isinstance(env.get(node.args[0]), tuple):
                i = node.args[1]
                pieces = env[node.args[0]]
                res = list(pieces[i]) if isinstance(i, int) and -len(pieces) <= i < len(pieces) else None
                if res is None:
                    res = unknown(node, f"{node.name} ({tname})")
            elif tname == "chunk" and x is not None:
                pieces = _chunk(node, x, tie)
                if pieces is None:
                    unknown(node, f"{node.name} ({tname})")
                env[node] = pieces
                continue
            elif shape is None and ((is_m and tgt in _QUERY_METHODS) or (not is_m and tgt in _QUERY_FUNCS)):
                # size / shape queries and getitem on Python containers: no tensor flows
                if not (not is_m and tgt is operator.getitem and x is not None):
                    env[node] = None
                    continue
                res = unknown(node, f"{node.name} ({tname})")
            elif (is_m and tgt in _PASS_METHODS) or (not is_m and (tgt in _PASS_FUNCS or tname in _PASS_FUNC_NAMES)):
                res = list(x) if x is not None else None
                if res is None and shape is not None and len(shape) >= 2:
                    res = unknown(node, f"{node.name} ({tname})")
            elif (is_m and tgt in _BINARY_METHODS) or (not is_m and tgt in _BINARY_FUNCS):
                res = _binary(node, shape, env, tie)
                if res is None:
                    res = unknown(node, f"{node.name} ({tname})")
            elif not is_m and tgt in _CAT_FUNCS:
                res = _cat(node, shape, env, tie)
                if res is None:
                    res = unknown(node, f"{node.name} ({tname})")
            elif (is_m and tgt in _REDUCE_METHODS) or (not is_m and tgt in _REDUCE_FUNCS):
                res = _reduce(node, shape, x)
                if res is None:
                    res = unknown(node, f"{node.name} ({tname})")
            elif (is_m and tgt in _RESHAPE_METHODS) or (not is_m and tgt in _RESHAPE_FUNCS):
                in_shape = _tensor_meta(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
                res = _reshape(x, in_shape, shape) if x is not None else None
                if res is None:
                    res = unknown(node, f"{node.name} ({tname})")
            else:
                res = unknown(node, f"{node.name} ({tname})")
        # safety net: the label count must match the real channel count
        if shape is not None and len(shape) >= 2:
            if res is None or len(res) != shape[1]:
                res = unknown(node, f"{node.name} (channel count mismatch)")
        elif shape is None or len(shape) < 2:
            if res is not None:  # a tensor without a channel dim built from channels: block
                block(res)
            res = None
        env[node] = res

    for name, tensors in shared.items():
        for mapping in (out_labels, in_labels, pass_labels):
            block(mapping.get(name))
        unsupported.append(f"{name} ({', '.join(tensors)} also used outside the module)")

    lists = [(name, out_labels[name] if by_name(kinds[name]).flow == "produce" else pass_labels[name])
             for name in order]
    lists += [(name, in_labels[name]) for name in order if name in in_labels]
    ids, num_groups = _number_groups(uf, [labels for _, labels in lists])
    layers: Dict[str, LayerInfo] = {}
    for name, g in zip(order, ids):
        kind = by_name(kinds[name])
        layers[name] = LayerInfo(name, kind.name, g, None, kind.out_dim, kind.in_dim, name in exclude)
    for (name, _), g in zip(lists[len(order):], ids[len(order):]):
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
    return Analysis(layers, num_groups, unsupported, members)


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


def _tuple_shapes(node: torch.fx.Node) -> Optional[List[Tuple[int, ...]]]:
    tm = node.meta.get("tensor_meta")
    if isinstance(tm, (tuple, list)) and tm and all(hasattr(t, "shape") for t in tm):
        return [tuple(t.shape) for t in tm]
    return None


def _chunk(node, x: List[int], tie) -> Optional[Tuple[List[int], ...]]:
    """``chunk`` along the channel dim: equal pieces, position j of every piece tied (the pieces
    stay equal after pruning, as chunk makes them); along another dim every piece has x's channels.
    ``split`` has absolute sizes, so it stays not understood."""
    shapes = _tuple_shapes(node)
    in_shape = _tensor_meta(node.args[0])
    if shapes is None or in_shape is None or len(in_shape) < 2:
        return None
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if not isinstance(dim, int):
        return None
    if _norm_dim(dim, len(in_shape)) != 1:
        return tuple(list(x) for _ in shapes)
    n = shapes[0][1]
    if any(s[1] != n for s in shapes) or n * len(shapes) != len(x):
        return None
    pieces = tuple(x[i * n:(i + 1) * n] for i in range(len(shapes)))
    for p in pieces[1:]:
        tie(pieces[0], p)
    return pieces


def _accepts(kind: LayerKind, mod: nn.Module, in_shape, n_labels: int) -> bool:
    """Whether a registered layer is used the way its kind assumes (else: not understood)."""
    if kind.name == "linear":
        return in_shape is not None and len(in_shape) == 2   # a Linear on [N, ..., C] moves the channel dim
    if kind.name == "convT":
        return mod.groups == 1
    if kind.name == "groupnorm":
        return n_labels == mod.num_channels
    return True


def _out_channels(mod: nn.Module) -> int:
    return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels


class _Tracer(torch.fx.Tracer):
    """Keeps every module of a registered kind a leaf, subclasses included (fx only keeps modules
    defined in torch.nn: it would trace into timm's BatchNormAct2d or a user's BatchNorm subclass,
    whose input-dim check cannot run on a Proxy), and the channel-preserving modules."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, leaf_classes() + _PASS_MODULES) or super().is_leaf_module(m, qualname)


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


def _binary(node, shape, env, tie) -> Optional[List[int]]:
    if shape is None or len(shape) < 2:
        return None
    c = shape[1]
    full: List[List[int]] = []
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, torch.fx.Node):
            s = _tensor_meta(a)
            if s is None:
                continue  # a Python number computed in the graph
            if len(s) != len(shape):
                return None  # broadcasting that moves the channel dim: not understood
            if s[1] == c:
                la = env.get(a)
                if la is None or len(la) != c:
                    return None
                full.append(la)
            elif s[1] != 1:
                return None
    if not full:
        return None
    for other in full[1:]:
        tie(full[0], other)
    return list(full[0])


def _cat(node, shape, env, tie) -> Optional[List[int]]:
    if shape is None or len(shape) < 2:
        return None
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        return None
    labs = [env.get(t) if isinstance(t, torch.fx.Node) else None for t in tensors]
    if any(l is None for l in labs):
        return None
    if _norm_dim(dim, len(shape)) == 1:
        return [l for ls in labs for l in ls]
    for other in labs[1:]:
        if len(other) != len(labs[0]):
            return None
        tie(labs[0], other)
    return list(labs[0])


def _reduce(node, shape, x) -> Optional[List[int]]:
    if x is None or shape is None or len(shape) < 2:
        return None
    in_shape = _tensor_meta(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dim is None or in_shape is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not all(isinstance(d, int) for d in dims):
        return None
    dims = [_norm_dim(d, len(in_shape)) for d in dims]
    if 0 in dims or 1 in dims:
        return None
    return list(x)


def _reshape(x: List[int], in_shape, out_shape) -> Optional[List[int]]:
    if in_shape is None or out_shape is None or len(in_shape) < 2 or len(out_shape) < 2:
        return None
    if out_shape[0] != in_shape[0]:
        return None
    if out_shape[1] == in_shape[1]:
        # dims 0 and 1 kept: a row-major reshape of the trailing dims keeps each channel's block
        return list(x)
    if len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
        rep = math.prod(in_shape[2:])
        return [l for l in x for _ in range(rep)]
    return None
