"""Label propagation over a traced graph: the core of the dependency analysis (:mod:`.graph`).

Every traced tensor carries a list of labels, one per channel, along its *channel dim* (dim 1 for
NCHW; the last dim after a ``permute`` to channels-last, as in ConvNeXt blocks). Layers of a
registered kind (:mod:`.kinds`) consume and produce labels; operations that tie channels together
unite labels in a union-find; anything not understood unites its labels with ``BLOCKED``.
Per-channel parameters used directly in the graph (ConvNeXt's layer scale ``gamma * x``, a
functional ``F.layer_norm(x, ..., self.weight, self.bias)``) become members of their channels.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .kinds import LayerKind, by_name, kind_of

__all__ = ["BLOCKED", "Flow", "PASS_MODULES", "tensor_meta"]

BLOCKED = 0

PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.PReLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
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
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
_RESHAPE = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
# what a per-channel parameter may go through before it meets the activations
_PARAM_VIEWS = {torch.reshape, "reshape", "view", "unsqueeze", "squeeze", "to", "type_as", "contiguous"}
_QUERY_METHODS = {"size", "dim", "numel", "ndimension"}
_QUERY_FUNCS = {getattr, operator.getitem, len}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_SKIP = object()   # a node whose environment entry is already set
_KNOWN_FUNCS = frozenset(_PASS_FUNCS | _BINARY_FUNCS | _CAT_FUNCS | _REDUCE | _RESHAPE | _PARAM_VIEWS)


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


def tensor_meta(node) -> Optional[Tuple[int, ...]]:
    tm = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    if tm is None or not hasattr(tm, "shape"):
        return None
    return tuple(tm.shape)


def _tuple_shapes(node: torch.fx.Node) -> Optional[List[Tuple[int, ...]]]:
    tm = node.meta.get("tensor_meta")
    if isinstance(tm, (tuple, list)) and tm and all(hasattr(t, "shape") for t in tm):
        return [tuple(t.shape) for t in tm]
    return None


def _flat_nodes(a) -> List[torch.fx.Node]:
    out: List[torch.fx.Node] = []
    torch.fx.node.map_arg(a, lambda n: out.append(n))
    return out


def _norm_dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


def _out_channels(mod: nn.Module) -> int:
    return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels


def _arg(node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


class Flow:
    """One pass over ``gm``'s nodes; the results are read by :func:`.graph.analyse`."""

    def __init__(self, modules: Dict[str, nn.Module], exclude: Sequence[str]) -> None:
        self.modules = modules
        self.exclude = set(exclude)
        self.uf = _UF()
        self.env: Dict[torch.fx.Node, Any] = {}       # labels | tuple of label lists | None
        self.cdim: Dict[torch.fx.Node, int] = {}      # the dim the labels run along (default 1)
        self.param: Dict[torch.fx.Node, Tuple[str, str]] = {}   # node -> (module, attr)
        self.unsupported: List[str] = []
        self.out_labels: Dict[str, List[int]] = {}    # producers: labels of output channels
        self.in_labels: Dict[str, List[int]] = {}     # consumers: labels of input positions
        self.pass_labels: Dict[str, List[int]] = {}   # per-channel layers
        self.kinds: Dict[str, str] = {}
        self.owner: Dict[str, Tuple[str, Tuple[Tuple[str, str], ...]]] = {}  # layer -> module, tensors
        self.order: List[str] = []
        self.shared: Dict[str, List[str]] = {}        # layer -> its tensors read outside the layer

    # ---------------------------------------------------------------------------- label helpers
    def block(self, labels) -> None:
        if isinstance(labels, tuple):
            for piece in labels:
                self.block(piece)
        elif labels:
            for l in labels:
                self.uf.union(BLOCKED, l)

    def tie(self, a: List[int], b: List[int]) -> None:
        for x, y in zip(a, b):
            self.uf.union(x, y)

    def record(self, mapping: Dict[str, List[int]], name: str, labels: List[int]) -> None:
        if name in mapping:  # layer called more than once: its slices are shared
            self.tie(mapping[name], labels)
        else:
            mapping[name] = list(labels)

    def unknown(self, node: torch.fx.Node, what: str) -> Optional[List[int]]:
        if what not in self.unsupported:
            self.unsupported.append(what)
        for a in _flat_nodes((node.args, node.kwargs)):
            self.block(self.env.get(a))
        return self._blocked(tensor_meta(node))

    @staticmethod
    def _blocked(shape) -> Optional[List[int]]:
        return [BLOCKED] * shape[1] if shape is not None and len(shape) >= 2 else None

    def _layer(self, key: str, kind: str, module: str, tensors) -> None:
        if key not in self.kinds:
            self.kinds[key] = kind
            self.owner[key] = (module, tuple(tensors))
            self.order.append(key)

    # ---------------------------------------------------------------------------- the pass
    def run(self, gm: torch.fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            shape = tensor_meta(node)
            if node.op == "output":
                for a in _flat_nodes(node.args):
                    self.block(self.env.get(a))
                continue
            if node.op == "placeholder":
                res = self._blocked(shape)
            elif node.op == "get_attr":
                res = self.get_attr(node, shape)
            elif node.op == "call_module":
                res = self.call_module(node, shape)
            else:
                res = self.call(node, shape)
            if res is not _SKIP:
                self.env[node] = self.check(node, shape, res)
        for name, tensors in self.shared.items():
            for mapping in (self.out_labels, self.in_labels, self.pass_labels):
                self.block(mapping.get(name))
            self.unsupported.append(f"{name} ({', '.join(tensors)} also used outside the module)")

    def check(self, node, shape, res):
        """Safety net: the label count must match the real size of the channel dim."""
        c = self.cdim.get(node, 1)
        if shape is not None and len(shape) >= 2 and c < len(shape):
            if res is None or len(res) != shape[c]:
                self.cdim[node] = 1
                return self.unknown(node, f"{node.name} (channel count mismatch)")
            return res
        if res is not None:  # a tensor without a channel dim built from channels: block
            self.block(res)
        return None

    def get_attr(self, node, shape):
        owner, _, attr = str(node.target).rpartition(".")
        mod = self.modules.get(owner)
        k = kind_of(mod) if mod is not None else None
        if k is not None and attr in dict(k.tensors) and k.leaf(mod):
            # read outside its (leaf) module: its channels cannot be shrunk safely
            self.shared.setdefault(owner, []).append(f"{owner}.{attr}")
        elif mod is not None and isinstance(getattr(mod, attr, None), torch.Tensor):
            self.param[node] = (owner, attr)
        if node in self.param:
            self.env[node] = None   # not an activation: it joins the channels it meets (_binary)
            return _SKIP
        return self._blocked(shape)

    def call_module(self, node, shape):
        name = str(node.target)
        mod = self.modules[name]
        src = node.args[0] if node.args else None
        x = self.env.get(src) if isinstance(src, torch.fx.Node) else None
        xc = self.cdim.get(src, 1)
        in_shape = tensor_meta(src)
        kind = kind_of(mod)
        if kind is not None and isinstance(x, list) and self._accepts(kind, mod, in_shape, x, xc):
            self.cdim[node] = xc
            res = self.layer_flow(name, mod, kind, x)
            if name in self.exclude:
                self.block(res)
            return res
        if isinstance(mod, PASS_MODULES) and isinstance(x, list):
            self.cdim[node] = xc
            return list(x)
        if isinstance(mod, nn.Flatten) and isinstance(x, list) and xc == 1:
            res = _reshape(x, in_shape, shape)
            if res is not None:
                return res
        return self.unknown(node, f"{name} ({type(mod).__name__})")

    @staticmethod
    def _accepts(kind: LayerKind, mod: nn.Module, in_shape, x: List[int], xc: int) -> bool:
        """Whether a registered layer is used the way its kind assumes (else: not understood)."""
        if in_shape is None:
            return False
        last = len(in_shape) - 1
        if kind.name == "linear":
            return xc == last                          # a Linear acts on the last dim
        if kind.name == "layernorm":
            return xc == last and tuple(mod.normalized_shape) == (len(x),)
        if xc != 1:
            return False
        if kind.name == "convT":
            return mod.groups == 1
        if kind.name == "groupnorm":
            return len(x) == mod.num_channels
        return True

    def layer_flow(self, name: str, mod: nn.Module, kind: LayerKind, x: List[int]) -> List[int]:
        """Labels of a registered layer's output (see :mod:`.kinds`), recording what it owns."""
        self._layer(name, kind.name, name, kind.tensors)
        g = getattr(mod, "groups", 1) if kind.name == "conv" else 1
        if kind.flow == "produce":
            n_in = len(x) // g
            for k in range(1, g):  # a grouped conv: input position j of every group is one label
                self.tie(x[:n_in], x[k * n_in:(k + 1) * n_in])
            self.record(self.in_labels, name, x[:n_in])
            if name not in self.out_labels:
                n_out = _out_channels(mod) // g
                fresh = self.uf.new(n_out)
                self.out_labels[name] = [fresh[j] for _ in range(g) for j in range(n_out)]
            return list(self.out_labels[name])
        if kind.name == "groupnorm":
            per = len(x) // mod.num_groups
            for k in range(mod.num_groups):  # whole norm groups: their channels go together
                self.tie([x[k * per]] * (per - 1), x[k * per + 1:(k + 1) * per])
        res = list(x)
        if kind.name == "dwconv":
            res = [c for c in x for _ in range(mod.out_channels // mod.in_channels)]
        self.record(self.pass_labels, name, res)
        return res

    # ---------------------------------------------------------------------------- functions
    def call(self, node, shape):
        tgt = node.target
        key = tgt if node.op == "call_method" or tgt in _KNOWN_FUNCS else None
        tname = tgt if node.op == "call_method" else getattr(tgt, "__name__", str(tgt))
        src = node.args[0] if node.args else None
        x = self.env.get(src) if isinstance(src, torch.fx.Node) else None
        xc = self.cdim.get(src, 1)
        if isinstance(src, torch.fx.Node) and src in self.param and key in _PARAM_VIEWS:
            self.param[node] = self.param[src]      # a per-channel parameter, reshaped to broadcast
            self.env[node] = None
            return _SKIP
        ins = [self.env.get(a) for a in _flat_nodes((node.args, node.kwargs))]
        if shape is None and _tuple_shapes(node) is None and all(l is None for l in ins):
            self.env[node] = None  # arithmetic on sizes, comparisons, asserts: no channel flows
            return _SKIP
        query = key in _QUERY_METHODS if node.op == "call_method" else tgt in _QUERY_FUNCS
        if shape is None and query and not (tgt is operator.getitem and isinstance(x, list)):
            self.env[node] = None  # size / shape queries, getitem on Python containers
            return _SKIP
        if tgt is operator.getitem and isinstance(x, tuple):
            i = node.args[1]
            if isinstance(i, int) and -len(x) <= i < len(x):
                self.cdim[node] = self.cdim.get(src, 1)
                return list(x[i])
            return self.unknown(node, f"{node.name} ({tname})")
        if not isinstance(x, (list, tuple)) and key not in _BINARY_FUNCS | _BINARY_METHODS | _CAT_FUNCS:
            return self.unknown(node, f"{node.name} ({tname})")
        return self._dispatch(node, shape, key, tname, x, xc)

    def _dispatch(self, node, shape, key, tname, x, xc):
        if node.target is operator.getitem and isinstance(x, list):
            res = self._slice(node, shape, x, xc)
            return res if res is not None else self.unknown(node, f"{node.name} (slicing channels)")
        if tname == "chunk":
            pieces = self._chunk(node, x, xc)
            if pieces is None:
                self.unknown(node, f"{node.name} ({tname})")
            self.env[node] = pieces
            self.cdim[node] = xc
            return _SKIP
        if tname == "permute":
            return self._permute(node, shape, x, xc)
        if tname in ("transpose", "swapaxes", "swapdims"):
            return self._transpose(node, shape, x, xc)
        if tname == "layer_norm":
            return self._layer_norm(node, shape, x, xc)
        res = None
        if key in _PASS_METHODS or key in _PASS_FUNCS or tname in _PASS_FUNC_NAMES:
            res, self.cdim[node] = list(x), xc
        elif key in _BINARY_FUNCS or key in _BINARY_METHODS:
            res = self._binary(node, shape)
        elif key in _CAT_FUNCS:
            res = self._cat(node, shape)
        elif key in _REDUCE:
            res = self._reduce(node, shape, x, xc)
        elif key in _RESHAPE and xc == 1:
            res = _reshape(x, tensor_meta(node.args[0]), shape)
        return res if res is not None else self.unknown(node, f"{node.name} ({tname})")

    def _slice(self, node, shape, x, xc) -> Optional[List[int]]:
        """``x[:, :n]`` with ``n >= C`` (GhostNet's ``out[:, :out_chs]``) or slices of other dims keep
        every channel, now and after any pruning (a slice past the end stops at the end); a slice
        that drops channels has absolute positions, which pruning would shift: not understood."""
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        in_shape = tensor_meta(node.args[0])
        if in_shape is None or shape is None or len(shape) != len(in_shape):
            return None
        if any(i is Ellipsis for i in idx):
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (len(in_shape) - len(idx) + 1) + idx[k + 1:]
        if len(idx) > len(in_shape) or not all(isinstance(i, slice) for i in idx):
            return None
        if xc < len(idx):
            sl = idx[xc]
            full = sl.start in (None, 0) and sl.step in (None, 1) and (sl.stop is None or (
                isinstance(sl.stop, int) and sl.stop >= len(x)))
            if not full:
                return None
        self.cdim[node] = xc
        return list(x)

    def _permute(self, node, shape, x, xc):
        dims = node.args[1:] if node.op == "call_method" else (_arg(node, 1, "dims"),)
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = tuple(dims[0])
        if shape is None or len(dims) != len(shape) or not all(isinstance(d, int) for d in dims):
            return None
        dims = [_norm_dim(d, len(shape)) for d in dims]
        self.cdim[node] = dims.index(xc)
        return list(x)

    def _transpose(self, node, shape, x, xc):
        d0, d1 = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
        if shape is None or not isinstance(d0, int) or not isinstance(d1, int):
            return None
        d0, d1 = _norm_dim(d0, len(shape)), _norm_dim(d1, len(shape))
        self.cdim[node] = d1 if xc == d0 else (d0 if xc == d1 else xc)
        return list(x)

    def _layer_norm(self, node, shape, x, xc):
        """``F.layer_norm(x, (C,), weight, bias)`` over the channel dim (a LayerNorm subclass that
        permutes around it, e.g. ConvNeXt's LayerNorm2d): its weight and bias are the channels'."""
        norm_shape = _arg(node, 1, "normalized_shape")
        if shape is None or xc != len(shape) - 1 or tuple(norm_shape or ()) != (len(x),):
            return None
        weight = _arg(node, 2, "weight")
        if weight is not None:
            ref = self.param.get(weight)
            mod = self.modules.get(ref[0]) if ref else None
            if ref is None or not isinstance(mod, nn.LayerNorm) or ref[1] != "weight":
                return None
            self._layer(ref[0], "layernorm", ref[0], by_name("layernorm").tensors)
            self.record(self.pass_labels, ref[0], x)
            if ref[0] in self.exclude:
                self.block(x)
        self.cdim[node] = xc
        return list(x)

    def _binary(self, node, shape) -> Optional[List[int]]:
        """Same-width operands are tied position by position (residual adds, gating); a
        per-channel parameter broadcast along the channel dim (layer scale) becomes a member."""
        args = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        full = [a for a in args if isinstance(self.env.get(a), list)]
        if shape is None or not full:
            return None
        c = self.cdim.get(full[0], 1)
        n = len(self.env[full[0]])
        params = []
        for a in args:
            s = tensor_meta(a)
            if s is None:
                continue      # a Python number computed in the graph
            if a in self.param and self._per_channel(a, s, shape, c, n):
                params.append(self.param[a])
            elif isinstance(self.env.get(a), list):
                if len(s) != len(shape) or self.cdim.get(a, 1) != c or len(self.env[a]) != n:
                    return None
            elif len(s) > len(shape) or (len(shape) - len(s) <= c and s[c - len(shape) + len(s)] != 1):
                return None   # a tensor of unknown channels along the channel dim
        labels = self.env[full[0]]
        for other in full[1:]:
            self.tie(labels, self.env[other])
        for owner, attr in params:
            key = f"{owner}.{attr}"
            self._layer(key, "scale", owner, ((attr, "out"),))
            self.record(self.pass_labels, key, labels)
        self.cdim[node] = c
        return list(labels)

    def _per_channel(self, a, s, shape, c: int, n: int) -> bool:
        """A parameter ``[n, 1, ...]`` viewed so that its only non-1 dim lands on the channel dim."""
        owner, attr = self.param[a]
        t = getattr(self.modules[owner], attr)
        if s is None or t.dim() == 0 or t.shape[0] != n or t.numel() != n:
            return False
        lead = len(shape) - len(s)
        big = [i for i, d in enumerate(s) if d != 1]
        return big == [c - lead] if n != 1 else False

    def _cat(self, node, shape) -> Optional[List[int]]:
        tensors = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        if shape is None or not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return None
        labs = [self.env.get(t) if isinstance(t, torch.fx.Node) else None for t in tensors]
        cds = {self.cdim.get(t, 1) for t in tensors if isinstance(t, torch.fx.Node)}
        if any(not isinstance(l, list) for l in labs) or len(cds) != 1:
            return None
        c = cds.pop()
        self.cdim[node] = c
        if _norm_dim(dim, len(shape)) == c:
            return [l for ls in labs for l in ls]
        for other in labs[1:]:
            if len(other) != len(labs[0]):
                return None
            self.tie(labs[0], other)
        return list(labs[0])

    def _reduce(self, node, shape, x, xc) -> Optional[List[int]]:
        in_shape = tensor_meta(node.args[0])
        dim = _arg(node, 1, "dim")
        if shape is None or in_shape is None or dim is None:
            return None
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not all(isinstance(d, int) for d in dims):
            return None
        dims = [_norm_dim(d, len(in_shape)) for d in dims]
        if 0 in dims or xc in dims:
            return None
        keep = _arg(node, 2, "keepdim", False)
        self.cdim[node] = xc if keep else xc - sum(d < xc for d in dims)
        return list(x)

    def _chunk(self, node, x, xc) -> Optional[Tuple[List[int], ...]]:
        """``chunk`` along the channel dim: equal pieces, position j of every piece tied (the
        pieces stay equal after pruning, as chunk makes them); along another dim every piece has
        x's channels. ``split`` has absolute sizes, so it stays not understood."""
        shapes = _tuple_shapes(node)
        in_shape = tensor_meta(node.args[0])
        dim = _arg(node, 2, "dim", 0)
        if shapes is None or in_shape is None or not isinstance(dim, int) or not isinstance(x, list):
            return None
        if _norm_dim(dim, len(in_shape)) != xc:
            return tuple(list(x) for _ in shapes)
        n = shapes[0][xc]
        if any(s[xc] != n for s in shapes) or n * len(shapes) != len(x):
            return None
        pieces = tuple(x[i * n:(i + 1) * n] for i in range(len(shapes)))
        for p in pieces[1:]:
            self.tie(pieces[0], p)
        return pieces


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
