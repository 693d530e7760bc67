"""Saving and loading pruned models and pruner checkpoints.

Every file is written atomically (temporary file named after the writer's pid, fsync, rename,
fsync of the directory) and carries a SHA-256 checksum; loading names the file and the cause of
any failure (empty, truncated, corrupted, wrong kind of file) and refuses a constructor that builds
a network with other hyperparameters than the saved one (see :func:`fingerprint`).

On-disk format: the bytes ``torch.save`` writes (a zip archive) with the zip comment
``mtlkernels-sha256:<hex>``, the SHA-256 of every byte before the comment-length field. Zip
readers, ``torch.load`` among them, ignore the comment, so the files stay readable by plain
``torch.load`` and by older versions of this package. Files written before the checksum existed
still load, checked by the zip's own per-record CRC-32.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import signal
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from .kinds import kind_of

__all__ = [
    "architecture", "apply_architecture", "fingerprint", "check_fingerprint", "save_pruned",
    "load_pruned", "model_from_checkpoint", "atomic_save", "atomic_write_bytes", "atomic_write_text",
    "read_checkpoint", "remove_stale_temps", "CheckpointError",
]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the cause."""


# ----------------------------------------------------------------------------- architecture
def _attrs_of(m: nn.Module):
    k = kind_of(m)
    return None if k is None else k.record


def _arch_value(v):
    return [int(x) for x in v] if isinstance(v, (tuple, list, torch.Size)) else int(v)


def architecture(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """``{module name: {"type": class name, attr: value}}`` for every module of a prunable kind
    (:mod:`.kinds`: the attributes a compaction may change)."""
    arch: Dict[str, Dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = _attrs_of(m)
        if attrs is not None:
            arch[name] = {"type": type(m).__name__, **{a: _arch_value(getattr(m, a)) for a in attrs}}
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
                setattr(m, a, tuple(int(x) for x in v) if isinstance(v, list) else int(v))
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


# Hyperparameters that change what a module computes (or how it trains) but that neither the
# channel counts of `architecture` nor the state dict's shapes reveal: a constructor that gets one
# of them wrong would load without complaint and compute something else.
_HYPER = (
    "kernel_size", "stride", "padding", "dilation", "output_padding", "padding_mode", "eps",
    "momentum", "affine", "track_running_stats", "elementwise_affine", "normalized_shape",
    "num_groups", "ceil_mode", "count_include_pad", "divisor_override", "return_indices",
    "output_size", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "p",
    "negative_slope", "alpha", "beta", "lambd", "threshold", "value", "min_val", "max_val",
    "approximate", "norm_type", "dim", "start_dim", "end_dim", "upscale_factor", "downscale_factor",
)


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list, torch.Size)):
        items = [_plain(x) for x in v]
        return None if any(x is _SKIP for x in items) else items
    return _SKIP


_SKIP = object()


def fingerprint(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """``{module name: {"type", "parameters", hyperparameter: value}}`` for every module: its class
    name, which parameters it has (e.g. whether a conv has a bias) and the hyperparameters in
    ``_HYPER`` it sets (kernel size, stride, padding, dilation, norm eps / affine, pooling...).
    Channel counts, ``groups`` and GroupNorm's ``num_groups`` are left out: pruning changes them
    (``architecture`` holds them)."""
    fp: Dict[str, Dict[str, Any]] = {}
    for name, m in model.named_modules():
        spec: Dict[str, Any] = {"type": type(m).__name__,
                                "parameters": sorted(k for k, p in m._parameters.items() if p is not None)}
        changed = _attrs_of(m) or ()
        for a in _HYPER:
            if a in m.__dict__ and a not in changed:
                v = _plain(m.__dict__[a])
                if v is not _SKIP:
                    spec[a] = v
        fp[name] = spec
    return fp


def _groups_differ(m: nn.Module, spec: Dict[str, Any]) -> bool:
    if "groups" not in spec or not hasattr(m, "groups") or int(m.groups) == spec["groups"]:
        return False
    # pruning a depthwise conv keeps groups == in_channels, so the unpruned one may have more groups
    depthwise_here = m.groups == getattr(m, "in_channels", None)
    depthwise_saved = spec["groups"] == spec.get("in_channels")
    return not (depthwise_here and depthwise_saved)


def _label(name: str) -> str:
    return repr(name) if name else "<the model itself>"


def _differences(model: nn.Module, saved: Optional[Dict[str, Dict[str, Any]]],
                 arch: Optional[Dict[str, Dict[str, Any]]]) -> List[str]:
    out: List[str] = []
    if saved is not None:
        here = fingerprint(model)
        for name in list(saved) + [n for n in here if n not in saved]:
            a, b = saved.get(name), here.get(name)
            if b is None:
                out.append(f"module {_label(name)} ({a['type']}) is in the file, not in the model")
            elif a is None:
                out.append(f"module {_label(name)} ({b['type']}) is in the model, not in the file")
            else:
                out += [f"module {_label(name)} ({a['type']}): {k} {a.get(k, '(unset)')!r} in the file, "
                        f"{b.get(k, '(unset)')!r} here" for k in list(a) + [k for k in b if k not in a]
                        if a.get(k) != b.get(k)]
    mods = dict(model.named_modules())
    for name, spec in (arch or {}).items():
        if name in mods and _groups_differ(mods[name], spec):
            out.append(f"module {_label(name)} ({spec.get('type')}): groups {spec['groups']} in the file, "
                       f"{mods[name].groups} here")
    return out


def check_fingerprint(model: nn.Module, saved: Optional[Dict[str, Dict[str, Any]]], path: PathLike,
                      arch: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and each difference when ``model`` (the
    unpruned one the constructor built, or an already restored one) has other module types or
    hyperparameters than the saved ``fingerprint`` (``None``: a file from before fingerprints,
    only the ``groups`` in ``arch`` can be checked)."""
    diffs = _differences(model, saved, arch)
    if diffs:
        more = f"; and {len(diffs) - 8} more" if len(diffs) > 8 else ""
        raise CheckpointError(
            f"{os.fspath(path)}: the model the constructor builds differs from the saved one "
            f"(it would load and compute something else): " + "; ".join(diffs[:8]) + more)


# ----------------------------------------------------------------------------- atomic writes
_TMP = re.compile(r"^\.tmp-(?P<target>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}$")
_FAULT_POINTS = ("before-temp-write", "mid-temp-write", "after-temp-write", "after-replace")
_writes = 0  # atomic writes by this process: the n of MTLKERNELS_FAULT=<point>@<n>


def _fault() -> Optional[tuple]:
    """``MTLKERNELS_FAULT=<point>[@<n>]`` kills this process with SIGKILL at ``<point>`` of its
    n-th atomic write (default: the first), so that tests can stop a writer at each boundary."""
    spec = os.environ.get("MTLKERNELS_FAULT")
    if not spec:
        return None
    point, _, n = spec.partition("@")
    if point not in _FAULT_POINTS or not (n or "1").isdigit():
        raise ValueError(f"MTLKERNELS_FAULT={spec!r}: expected <point>[@<n>], point one of {_FAULT_POINTS}")
    return point, int(n or 1)


def _die_at(point: str, fault: Optional[tuple]) -> None:
    if fault == (point, _writes):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _pid_alive(pid: int) -> bool:
    if os.name == "nt" or pid == os.getpid():
        return True  # (Windows: os.kill would terminate it, not probe it)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process (EPERM) or not a pid: not ours to judge
    return True


def _remove_stale(directory: str, names: Iterable[str], target: Optional[str] = None) -> List[str]:
    removed = []
    for n in names:
        m = _TMP.match(n)
        if m and (target is None or m["target"] == target) and not _pid_alive(int(m["pid"])):
            p = os.path.join(directory, n)
            with contextlib.suppress(FileNotFoundError):  # another cleaner was first
                os.unlink(p)
                removed.append(p)
    return removed


def remove_stale_temps(directory: PathLike, recursive: bool = True) -> List[str]:
    """Remove the temporaries of atomic writes whose writer process is dead (killed mid-write),
    in ``directory`` and, with ``recursive``, below it; a temporary of a live process, this one
    included, is never touched. Returns the removed paths. Only names this module writes
    (``.tmp-<name>.<pid>.<8 hex>``) are considered; the pid check assumes the writers ran on this
    machine and in this pid namespace (not on another host or container sharing the directory)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    if not recursive:
        return _remove_stale(directory, os.listdir(directory))
    removed = []
    for d, _, files in os.walk(directory):
        removed += _remove_stale(d, files)
    return removed


def _fsync_dir(d: str) -> None:
    if os.name == "nt":
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power loss only once the directory is synced
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data) -> None:
    """Write ``data`` (bytes-like) to ``path`` so that a crash leaves the old file or the new one,
    never a torn one: a temporary ``.tmp-<name>.<pid>.<random>`` in the same directory, fsync,
    ``os.replace``, fsync of the directory. Stale temporaries of ``path`` left by dead writers
    are removed first."""
    global _writes
    path = os.path.abspath(os.fspath(path))
    d, base = os.path.split(path)
    os.makedirs(d, exist_ok=True)
    _remove_stale(d, os.listdir(d), target=base)
    _writes += 1
    fault = _fault()
    _die_at("before-temp-write", fault)
    tmp = os.path.join(d, f".tmp-{base}.{os.getpid()}.{secrets.token_hex(4)}")
    view = memoryview(data).cast("B")
    try:
        with open(tmp, "xb") as f:
            if fault == ("mid-temp-write", _writes):
                f.write(view[:len(view) // 2])
                f.flush()
                _die_at("mid-temp-write", fault)
            f.write(view)
            f.flush()
            os.fsync(f.fileno())
        _die_at("after-temp-write", fault)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _die_at("after-replace", fault)
    _fsync_dir(d)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


# ----------------------------------------------------------------------------- checksummed torch files
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes + comment, last in the file
_TAG = b"mtlkernels-sha256:"
_COMMENT = len(_TAG) + 64


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` of ``obj`` with a SHA-256 checksum in the zip comment, written with
    :func:`atomic_write_bytes`; read it back with :func:`read_checkpoint` (plain ``torch.load``
    reads it too, without the check)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    if len(data) < 22 or data[-22:-18] != _EOCD or data[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote no comment-less zip end record: the checksum has no place")
    digest = hashlib.sha256(data[:-2]).hexdigest().encode()
    del data  # (a BytesIO with an exported buffer cannot be written to)
    buf.seek(-2, io.SEEK_END)
    buf.write(_COMMENT.to_bytes(2, "little") + _TAG + digest)
    atomic_write_bytes(path, buf.getbuffer())


def _verify(path: str, data: bytes) -> None:
    """Raise CheckpointError unless ``data`` is a complete torch zip whose checksum (or, in a
    file written without one, each record's CRC-32) matches."""
    if not data:
        raise CheckpointError(f"{path}: empty: the file has 0 bytes (its write never happened?)")
    if data[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not a checkpoint: a torch checkpoint is a zip archive, this file "
                              f"starts with {bytes(data[:8])!r}")
    end = data.rfind(_EOCD, max(0, len(data) - 22 - 65535))
    comment = int.from_bytes(data[end + 20:end + 22], "little") if end >= 0 else 0
    if end < 0 or end + 22 + comment > len(data):
        raise CheckpointError(f"{path}: truncated: the file ({len(data)} bytes) ends before the end "
                              "record of its zip archive (an interrupted copy or a full disk?)")
    if comment == _COMMENT and data[end + 22:end + 22 + len(_TAG)] == _TAG:
        want = bytes(data[end + 22 + len(_TAG):end + 22 + _COMMENT]).decode("ascii", "replace")
        if hashlib.sha256(memoryview(data)[:end + 20]).hexdigest() != want:
            raise CheckpointError(f"{path}: corrupted: SHA-256 checksum mismatch (the bytes differ from "
                                  "those written: a damaged disk, a bad copy or an edit)")
        return
    try:  # written without a checksum: the zip's CRC-32 of each record is the check there is
        bad = zipfile.ZipFile(io.BytesIO(data)).testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: corrupted: unreadable zip archive ({e})") from e
    if bad is not None:
        raise CheckpointError(f"{path}: corrupted: CRC-32 mismatch in record {bad!r} (a file written "
                              "without a checksum)")


def read_checkpoint(path: PathLike, map_location=None) -> Any:
    """``torch.load`` of a file written by :func:`atomic_save` (or by plain ``torch.save``) after
    checking it; a file that is empty, truncated, corrupted or not a torch file raises
    :class:`CheckpointError` naming the file and the cause."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    _verify(path, data)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - the bytes are intact: say what torch.load objected to
        raise CheckpointError(f"{path}: torch.load failed on its intact bytes "
                              f"({type(e).__name__}: {e})") from e


_KINDS = {"pruned": "a pruned-model file (save_pruned)",
          "pruner": "a pruner checkpoint (MultiTaskPruner.save)"}
_READER = {"pruned": "load_pruned", "pruner": "MultiTaskPruner.resume / MultiTaskPruner.load"}


def _kind(ckpt: Any) -> Optional[str]:
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    for k in _KINDS:
        if isinstance(fmt, str) and fmt.startswith(f"mtlkernels.{k}/"):
            return k
    return None


def read_kind(path: PathLike, kinds: Iterable[str], map_location=None) -> Dict[str, Any]:
    """:func:`read_checkpoint`, refusing a file that is not of one of ``kinds`` ("pruned",
    "pruner") with a message that says what it is and which function reads it."""
    ckpt = read_checkpoint(path, map_location)
    kind, kinds = _kind(ckpt), tuple(kinds)
    if kind in kinds:
        return ckpt
    if kind is not None:
        what = f"{_KINDS[kind]}; read it with {_READER[kind]}"
    elif isinstance(ckpt, dict):
        what = f"a torch file of another program (a dict with keys {sorted(map(str, ckpt))[:8]})"
    else:
        what = f"a torch file of another program (a {type(ckpt).__name__})"
    raise CheckpointError(f"{os.fspath(path)}: wrong kind of file: expected "
                          f"{' or '.join(_KINDS[k] for k in kinds)}, it is {what}")


# ----------------------------------------------------------------------------- pruned models
def _json(x):
    return json.loads(x) if isinstance(x, str) else x


def save_pruned(model: nn.Module, path: PathLike, extra: Dict[str, Any] = None) -> None:
    """Save ``model`` as ``{"state_dict", "architecture", "fingerprint" (JSON strings), "extra"}``
    (atomically, with a checksum)."""
    atomic_save({
        "format": "mtlkernels.pruned/1",
        "architecture": json.dumps(architecture(model), sort_keys=True),
        "fingerprint": json.dumps(fingerprint(model)),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }, path)


def load_pruned(constructor: Callable[[], nn.Module], path: PathLike, map_location=None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (or held by a ``MultiTaskPruner.save`` file):
    ``constructor()`` builds the unpruned model (a class or any zero-argument callable), which is
    checked against the saved fingerprint, shrunk to the saved architecture and loaded."""
    return model_from_checkpoint(constructor, read_kind(path, ("pruned", "pruner"), map_location), path)


def model_from_checkpoint(constructor: Callable[[], nn.Module], ckpt: Dict[str, Any],
                          path: PathLike = "<checkpoint>") -> nn.Module:
    """The model held by a loaded checkpoint ``ckpt`` (read from ``path``, named in errors)."""
    path = os.fspath(path)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: holds no model (a pruner checkpoint saved with include_model=False: "
                              "MultiTaskPruner.load restores it onto a model rebuilt otherwise)")
    arch = _json(ckpt["architecture"])
    model = constructor()
    check_fingerprint(model, _json(ckpt.get("fingerprint")), path, arch)
    try:
        apply_architecture(model, arch, ckpt["state_dict"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the saved model does not fit the one the constructor builds: "
                              f"{e}") from e
    return model
