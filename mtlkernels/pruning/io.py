"""Saving and loading pruned models: state dict + JSON architecture (per-layer channel counts)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Dict, Union

import torch
from torch import nn

__all__ = ["architecture", "apply_architecture", "save_pruned", "load_pruned", "atomic_save"]

_ATTRS = {
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
    nn.modules.instancenorm._InstanceNorm: ("num_features",),
    nn.PReLU: ("num_parameters",),
}


def _attrs_of(m: nn.Module):
    for cls, attrs in _ATTRS.items():
        if isinstance(m, cls):
            return attrs
    return None


def architecture(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """``{module name: {"type": class name, attr: value}}`` for every conv / linear / norm / PReLU."""
    arch: Dict[str, Dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = _attrs_of(m)
        if attrs is not None:
            arch[name] = {"type": type(m).__name__, **{a: int(getattr(m, a)) for a in attrs}}
    return arch


def apply_architecture(model: nn.Module, arch: Dict[str, Dict[str, Any]], state_dict=None) -> nn.Module:
    """Shrink a freshly built ``model`` in place to ``arch``; with ``state_dict``, every parameter
    and buffer whose shape differs is replaced by an empty tensor of the saved shape (to be filled
    by ``load_state_dict``)."""
    modules = dict(model.named_modules())
    for name, spec in arch.items():
        if name not in modules:
            raise KeyError(f"the saved architecture has a module {name!r} that the model lacks")
        m = modules[name]
        if type(m).__name__ != spec.get("type", type(m).__name__):
            raise TypeError(f"module {name!r} is a {type(m).__name__}, the saved one a {spec['type']}")
        for a, v in spec.items():
            if a != "type":
                setattr(m, a, int(v))
    if state_dict is not None:
        for key, t in state_dict.items():
            mod_name, _, attr = key.rpartition(".")
            m = modules.get(mod_name)
            if m is None:
                continue
            if attr in m._parameters and m._parameters[attr] is not None:
                old = m._parameters[attr]
                if tuple(old.shape) != tuple(t.shape):
                    m._parameters[attr] = nn.Parameter(
                        torch.empty(t.shape, dtype=old.dtype, device=old.device),
                        requires_grad=old.requires_grad)
            elif attr in m._buffers and m._buffers[attr] is not None:
                old = m._buffers[attr]
                if tuple(old.shape) != tuple(t.shape):
                    m._buffers[attr] = torch.empty(t.shape, dtype=old.dtype, device=old.device)
    return model


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace`` onto ``path``
    (a crash leaves either the old file or the new one, never a torn one)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_pruned(model: nn.Module, path: Union[str, os.PathLike], extra: Dict[str, Any] = None) -> None:
    """Save ``model`` as ``{"state_dict", "architecture" (JSON string), "extra"}`` (atomically)."""
    atomic_save({
        "format": "mtlkernels.pruned/1",
        "architecture": json.dumps(architecture(model), sort_keys=True),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }, path)


def load_pruned(constructor: Callable[[], nn.Module], path: Union[str, os.PathLike],
                map_location=None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`: ``constructor()`` builds the unpruned model (a
    class or any zero-argument callable), which is shrunk to the saved architecture and loaded."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    return model_from_checkpoint(constructor, ckpt)


def model_from_checkpoint(constructor: Callable[[], nn.Module], ckpt: Dict[str, Any]) -> nn.Module:
    arch = ckpt["architecture"]
    if isinstance(arch, str):
        arch = json.loads(arch)
    model = constructor()
    apply_architecture(model, arch, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    return model
