"""Which backends exist here, and which one a call uses.

Backends: ``"reference"`` (pure PyTorch, always there), ``"cpu"`` (C++ kernels in ``mtlkernels._C``),
``"cuda"`` (CUDA kernels in ``mtlkernels._C`` when it was built with CUDA), ``"triton"`` (Triton
kernels; on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``).

``backend="auto"`` picks, by the device of the inputs: CPU -> ``cpu``, then ``reference``;
CUDA -> ``cuda``, then ``triton``, then ``reference``. The environment variable
``MTLKERNELS_BACKEND`` replaces ``"auto"`` (not an explicit choice) with a fixed backend.
An explicit backend that cannot run raises ``RuntimeError`` saying why.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Optional

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")
ENV_VAR = "MTLKERNELS_BACKEND"

_C = None
_C_ERROR: Optional[str] = None
try:  # the compiled extension registers the torch.ops.mtlkernels.* ops on import
    from . import _C  # type: ignore[no-redef]  # noqa: F401
    from . import _fake  # noqa: F401  (meta kernels for torch.compile / opcheck)
except Exception as exc:  # not built, or built against another torch
    _C_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "mtlkernels: the compiled extension mtlkernels._C could not be loaded "
        f"({_C_ERROR}); the C++/CUDA backends are unavailable and calls fall back to the "
        "pure-PyTorch reference. Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_compiled_ops() -> bool:
    """True when ``mtlkernels._C`` loaded and registered its ops."""
    return _C is not None


def compiled_with_cuda() -> bool:
    return _C is not None and bool(torch.ops.mtlkernels._built_with_cuda())


@functools.lru_cache(maxsize=None)
def _cuda_image_error(index: int) -> Optional[str]:
    """None when mtlkernels._C holds a kernel image CUDA device ``index`` can run (SASS of its
    architecture, or PTX its driver compiles), else why not. A build lists its targets at compile
    time (setup.py); a GPU outside them would fail every launch with "no kernel image"."""
    try:
        err = torch.ops.mtlkernels._cuda_kernel_image_error(index)
    except Exception as exc:  # e.g. an _C built before this op existed
        err = f"{type(exc).__name__}: {exc}"
    if not err:
        return None
    try:
        major, minor = torch.cuda.get_device_capability(index)
        cap = f" (compute capability {major}.{minor}; rebuild with TORCH_CUDA_ARCH_LIST={major}.{minor})"
    except Exception:
        cap = ""
    return f"mtlkernels._C has no kernel image for cuda:{index}{cap}: {err}"


def _cuda_reason(device: torch.device) -> Optional[str]:
    if not compiled_with_cuda():
        return "mtlkernels._C was built without CUDA (no CUDA torch or no CUDA toolkit at build time)"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return _cuda_image_error(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _triton_error() -> Optional[str]:
    if _C is None:  # the Triton ops take their tables from mtlkernels._C (one format per op)
        return f"the Triton ops need mtlkernels._C for their tables, which is not loaded ({_C_ERROR})"
    try:
        import triton  # noqa: F401

        from . import triton_ops  # noqa: F401
    except Exception as exc:
        return f"Triton is not usable: {type(exc).__name__}: {exc}"
    return None


def unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """None when ``backend`` can run on ``device``, else why not (one sentence)."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            return f"the {backend!r} backend takes {backend.upper()} tensors, got tensors on {device}"
        if _C is None:
            return f"mtlkernels._C is not loaded ({_C_ERROR})"
        return _cuda_reason(device) if backend == "cuda" else None
    if backend == "triton":
        if device.type not in ("cpu", "cuda"):
            return f"Triton takes CUDA tensors, got tensors on {device}"
        err = _triton_error()
        if err is not None:
            return err
        from . import triton_ops

        # The interpreter is chosen when the kernels are decorated (import time), not per call.
        if device.type == "cpu" and not triton_ops.INTERPRET:
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before mtlkernels.triton_ops is imported)"
        return None
    return f"unknown backend {backend!r}; expected one of {BACKENDS} or 'auto'"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def resolve(backend: str, device: torch.device, *, allow: tuple = BACKENDS) -> str:
    """Turn ``backend`` (``"auto"`` or a name) into the backend that will run on ``device``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        if backend == "auto":
            order = ("cpu", "reference") if device.type == "cpu" else ("cuda", "triton", "reference")
            for b in order:
                if b in allow and unavailable_reason(b, device) is None:
                    return b
            return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in allow:
        raise RuntimeError(f"backend {backend!r} cannot run this call: it supports {allow}")
    why = unavailable_reason(backend, device)
    if why is not None:
        raise RuntimeError(f"backend {backend!r} is unavailable: {why}")
    return backend
