"""Model surgery for the pruning driver: compaction (physically remove channels) and masking (zero
them), of modules, buffers, gradients and optimizer state. Which tensors a layer owns, in which
role, and which attributes change come from the layer-kind registry (:mod:`.kinds`).

Compaction is ONE :func:`mtlkernels.ops.gather_many` call per prune over every tensor to shrink;
the modules get new ``Parameter`` objects and the optimizer's ``param_groups`` and ``state`` are
moved onto them. Masks zero the pruned channels' weights, biases, norm parameters *and the
consumers' input columns* (so an activation that is non-zero at 0, e.g. sigmoid, cannot leak);
gradient hooks and an optimizer step hook keep them zero.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops as _ops
from .graph import Analysis, LayerInfo
from .kinds import by_name

__all__ = ["hit", "compact", "Masks"]


def hit(groups: Tensor, flags: Tensor) -> Tensor:
    """``flags[groups]`` where ``groups >= 0``, False where ``-1`` (never pruned)."""
    if flags.numel() == 0:
        return torch.zeros(groups.shape, dtype=torch.bool)
    return (groups >= 0) & flags[groups.clamp_min(0)]


def _like_layout(new: Tensor, old: Tensor) -> Tensor:
    """A channels_last tensor stays channels_last through compaction (the gather writes the default
    layout), so a channels_last model keeps its fast path."""
    if old.dim() in (4, 5) and not old.is_contiguous():
        fmt = torch.channels_last if old.dim() == 4 else torch.channels_last_3d
        if old.is_contiguous(memory_format=fmt):
            return new.contiguous(memory_format=fmt)
    return new


def layer_tensors(mod: nn.Module, info: LayerInfo):
    """(attribute, role, tensor) of the layer's existing channel-carrying tensors."""
    for attr, role in info.tensors:
        t = getattr(mod, attr, None)
        if t is not None:
            yield attr, role, t


def _keep(groups: Optional[Tensor], flags: Tensor) -> Optional[Tensor]:
    """Indices of the positions not flagged, or None when none is (nothing to gather)."""
    if groups is None:
        return None
    h = hit(groups, flags)
    return torch.nonzero(~h).flatten() if h.any() else None


# (module, attr, what: 'param'|'buffer'|'grad'|'state', tensor, out_idx, in_idx, out_dim, in_dim, state key)
_Entry = Tuple[nn.Module, str, str, Tensor, Optional[Tensor], Optional[Tensor], int, int, Optional[str]]


def _entries(an: Analysis, modules: Dict[str, nn.Module], keep_out, keep_in, optimizer) -> List[_Entry]:
    """Every tensor a compaction shrinks, with its indices."""
    opt_state = optimizer.state if optimizer is not None else {}
    entries: List[_Entry] = []
    for name, info in an.layers.items():
        ko, ki = keep_out[name], keep_in[name]
        if ko is None and ki is None:
            continue
        mod = modules[info.module]
        for attr, role, t in layer_tensors(mod, info):
            oi, ii, od, idim = (ko, ki, info.out_dim, info.in_dim) if role == "w" else (ko, None, 0, 1)
            if oi is None and ii is None:
                continue
            oi = None if oi is None else oi.to(t.device)
            ii = None if ii is None else ii.to(t.device)
            is_param = attr in mod._parameters
            entries.append((mod, attr, "param" if is_param else "buffer", t, oi, ii, od, idim, None))
            if not is_param:
                continue
            if t.grad is not None:
                entries.append((mod, attr, "grad", t.grad, oi, ii, od, idim, None))
            for key, v in (opt_state.get(t, {}) if opt_state else {}).items():
                if isinstance(v, Tensor) and v.shape == t.shape and v.dim() > 0:
                    entries.append((mod, attr, "state", v, oi, ii, od, idim, key))
    return entries


def _install(entries: List[_Entry], new: List[Tensor], optimizer) -> None:
    """New Parameters/buffers into the modules; grads onto them; optimizer groups and state moved."""
    replaced: Dict[int, Tuple[nn.Parameter, nn.Parameter]] = {}
    new_params: Dict[Tuple[int, str], nn.Parameter] = {}
    for (mod, attr, what, old, *_), t in zip(entries, new):
        if what == "param":
            p = nn.Parameter(t, requires_grad=old.requires_grad)
            mod._parameters[attr] = p
            new_params[(id(mod), attr)] = p
            replaced[id(old)] = (old, p)
        elif what == "buffer":
            mod._buffers[attr] = t
    for (mod, attr, what, *_), t in zip(entries, new):
        if what == "grad":
            new_params[(id(mod), attr)].grad = t
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [replaced[id(p)][1] if id(p) in replaced else p for p in group["params"]]
    state = optimizer.state
    for old, p in replaced.values():
        if old in state:
            state[p] = dict(state.pop(old))
    for e, t in zip(entries, new):
        if e[2] == "state":
            state[new_params[(id(e[0]), e[1])]][e[8]] = t


def compact(an: Analysis, modules: Dict[str, nn.Module], pruned: Tensor, optimizer, backend: str
            ) -> Dict[str, Optional[Tensor]]:
    """Remove the channels of the ``pruned`` groups from every layer; returns each layer's kept
    output positions (None: unchanged). The caller re-analyses the model afterwards."""
    keep_out = {n: _keep(i.out_groups, pruned) for n, i in an.layers.items()}
    keep_in = {n: _keep(i.in_groups, pruned) for n, i in an.layers.items()}
    entries = _entries(an, modules, keep_out, keep_in, optimizer)
    if entries:
        with torch.no_grad():
            new = _ops.gather_many([e[3].detach() for e in entries], [e[4] for e in entries],
                                   [e[5] for e in entries], out_dims=[e[6] for e in entries],
                                   in_dims=[e[7] for e in entries], backend=backend)
            new = [_like_layout(t, e[3]) for t, e in zip(new, entries)]
        _install(entries, new, optimizer)
    for name, info in an.layers.items():
        ko = keep_out[name]
        if ko is not None or keep_in[name] is not None:
            by_name(info.kind).resize(modules[info.module], info.out_groups.numel() if ko is None else ko.numel())
    return keep_out


class Masks:
    """Per (module, attr) multiplicative masks of the dead channels (mask mode), and the hooks that
    keep them applied."""

    def __init__(self) -> None:
        self.masks: Dict[str, Dict[str, Tensor]] = {}
        self._hooks: list = []

    def build(self, an: Analysis, modules: Dict[str, nn.Module], alive: Tensor) -> None:
        self.modules = modules
        self.masks = {}
        dead = ~alive
        for name, info in an.layers.items():
            out_dead = hit(info.out_groups, dead)
            in_dead = None if info.in_groups is None else hit(info.in_groups, dead)
            if not out_dead.any() and (in_dead is None or not in_dead.any()):
                continue
            for attr, role, t in layer_tensors(modules[info.module], info):
                if role == "w":
                    mask = _along((~out_dead).to(t.dtype), t.dim(), info.out_dim)
                    if in_dead is not None:
                        mask = mask * _along((~in_dead).to(t.dtype), t.dim(), info.in_dim)
                else:
                    mask = _along((~out_dead).to(t.dtype), t.dim(), 0)
                self.masks.setdefault(info.module, {})[attr] = mask.to(t.device)

    def mask_tensor(self, p: Tensor, t: Tensor) -> Tensor:
        """``t`` (e.g. a gradient of ``p``) masked like ``p``."""
        for name, d in self.masks.items():
            mod = self.modules[name]
            for attr, m in d.items():
                if mod._parameters.get(attr) is p:
                    return t * m
        return t

    def install_hooks(self, an: Analysis, modules: Dict[str, nn.Module], optimizer) -> None:
        self.modules = modules
        for info in an.layers.values():
            for attr, _ in info.tensors:
                p = modules[info.module]._parameters.get(attr)
                if p is not None and p.requires_grad:
                    self._hooks.append(p.register_hook(functools.partial(self._grad_hook, info.module, attr)))
        if optimizer is not None and hasattr(optimizer, "register_step_post_hook"):
            self._hooks.append(optimizer.register_step_post_hook(lambda *a, **k: self.apply(optimizer)))

    def _grad_hook(self, name: str, attr: str, g: Tensor) -> Tensor:
        m = self.masks.get(name, {}).get(attr)
        return g if m is None else g * m

    @torch.no_grad()
    def apply(self, optimizer, modules: Optional[Dict[str, nn.Module]] = None, tensors_only: bool = False) -> None:
        """Zero the pruned channels of every parameter and buffer (and, unless ``tensors_only``,
        their gradients and optimizer state) of ``modules`` (default: the masked model's)."""
        mods = modules or self.modules
        state = optimizer.state if optimizer is not None else {}
        for name, d in self.masks.items():
            for attr, m in d.items():
                t = getattr(mods[name], attr)
                t.mul_(m)
                if tensors_only or not isinstance(t, nn.Parameter):
                    continue
                if t.grad is not None:
                    t.grad.mul_(m)
                for v in state.get(t, {}).values():
                    if isinstance(v, Tensor) and v.shape == t.shape and v.dim() > 0:
                        v.mul_(m)

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _along(v: Tensor, ndim: int, dim: int) -> Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return v.view(shape)
