"""Decoding backends: one interface (`Backend`, `Session` in base.py), one per fast path.

- `mlx`: model.py's graph as it is: the reference, and what Apple silicon runs (Metal).
- `cpu`: the C kernels of csrc/ (Linux CPUs): encoder blocks, decoder step over B rows, pickers.
- `cuda`: MLX's CUDA backend with compiled fixed-shape steps and the fused CUDA decoder step.

The rule, applied once when a model is loaded (`choose`): a backend named by the caller
(`load_model(..., backend=...)`, `--backend`) or by the environment (WHISPER_MLX_BACKEND) when it
can run the model here; otherwise `cuda` when MLX computes on a CUDA GPU, `cpu` when it computes
on the CPU with the C kernels loaded, else `mlx`. `whisper-mlx doctor` prints the choice and why.
"""

from __future__ import annotations

import os
import weakref

from ..model import Whisper
from .base import Backend, Session, Unsupported

ENV = "WHISPER_MLX_BACKEND"
NAMES = ("mlx", "cpu", "cuda")


def backend_class(name: str) -> type[Backend]:
    """The backend class for a name in NAMES (imported on demand)."""
    if name == "mlx":
        from .mlx import MlxBackend

        return MlxBackend
    if name == "cpu":
        from .cpu import CpuBackend

        return CpuBackend
    if name == "cuda":
        from .cuda import CudaBackend

        return CudaBackend
    raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(NAMES)}")


def default_name() -> tuple[str, str]:
    """The backend this machine would use with nothing named, and why."""
    import mlx.core as mx

    from .. import cpu_kernels

    if mx.default_device() == mx.gpu:
        if _cuda():
            return "cuda", "MLX computes on a CUDA GPU"
        return "mlx", "MLX computes on the GPU (Metal)"
    if cpu_kernels.available():
        return "cpu", "MLX computes on the CPU and whisper_mlx's C kernels are loaded"
    return "mlx", "MLX computes on the CPU and whisper_mlx's C kernels are not loaded"


def _cuda() -> bool:
    import mlx.core as mx

    try:
        return bool(mx.cuda.is_available())
    except AttributeError:
        return False


def choose(model: Whisper, name: str | None = None) -> tuple[Backend, str]:
    """A backend for `model` by the rule above, and the reason for it. A backend named by the
    caller that cannot run the model here is an error; one named by the environment falls back
    to the default with the reason."""
    wanted, source = (name, "asked for") if name else (os.environ.get(ENV) or None, f"named by {ENV}")
    if wanted:
        if wanted not in NAMES:
            raise ValueError(f"backend {wanted!r} ({source}): choose one of {', '.join(NAMES)}")
        backend, problem = _build(backend_class(wanted), model)
        if backend is not None:
            return backend, source
        if name:
            raise ValueError(f"backend {wanted!r} cannot run this model here: {problem}")
        fallback, why = default_name()
        reason = f"{wanted} {source} cannot run here ({problem}); {why}"
    else:
        fallback, reason = default_name()
    backend, problem = _build(backend_class(fallback), model)
    if backend is None:
        backend, reason = backend_class("mlx")(model), f"{reason}, but {fallback} cannot run this model ({problem})"
    return backend, reason


def _build(cls: type[Backend], model: Whisper) -> tuple[Backend | None, str | None]:
    """The backend for the model, or None and why it cannot run it."""
    problem = cls.supports(model)
    if problem is not None:
        return None, problem
    try:
        return cls(model), None
    except Unsupported as e:
        return None, str(e)


_attached: dict[int, tuple[Backend, str]] = {}


def attach(model: Whisper, name: str | None = None) -> Backend:
    """Choose the model's backend now (load_model does) and keep it for the model's lifetime."""
    backend, reason = choose(model, name)
    key = id(model)
    if key not in _attached:
        weakref.finalize(model, _attached.pop, key, None)
    _attached[key] = (backend, reason)
    return backend


def backend_for(model: Whisper) -> Backend:
    """The backend attached to `model` (a model built without load_model gets one now)."""
    found = _attached.get(id(model))
    return found[0] if found else attach(model)


def reason_for(model: Whisper) -> str:
    """Why the model's backend was chosen."""
    backend_for(model)
    return _attached[id(model)][1]


__all__ = ["Backend", "Session", "Unsupported", "NAMES", "attach", "backend_for", "choose", "default_name", "reason_for"]
