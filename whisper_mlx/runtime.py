"""Set up MLX before `mlx.core` is imported: the BLAS it links on Linux, the device.

On Linux the `mlx-cpu` wheel links the reference (netlib) BLAS, ~25x slower than an optimized
one. Loading OpenBLAS with RTLD_GLOBAL before MLX resolves `cblas_sgemm` makes MLX use it;
whisper_mlx's C kernels (cpu_kernels.py), loaded just before it, route one-row products to sgemv.
This module must be imported before anything imports `mlx.core`; `whisper_mlx/__init__` does so.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from . import cpu_kernels

# Debian/Ubuntu (libopenblas0-pthread), Fedora, Alpine; WHISPER_MLX_BLAS overrides.
_BLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

BLAS: str = "bundled (Accelerate)" if sys.platform == "darwin" else "bundled reference BLAS (slow)"


def _preload_blas() -> None:
    """Load an optimized BLAS into the global symbol namespace, once, before mlx.core."""
    global BLAS
    if sys.platform != "linux":
        return
    if "mlx.core" in sys.modules:
        import warnings

        warnings.warn(
            "mlx.core was imported before whisper_mlx: MLX keeps its reference BLAS (about 10x slower "
            "on the CPU). Import whisper_mlx first.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    wanted = os.environ.get("WHISPER_MLX_BLAS")
    if wanted == "none":
        return
    # OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after each product before they sleep,
    # taking a core from the C kernels' own threads (encoder attention, the decoder step) in
    # between: half their speed on 2 cores. 2^20 cycles (~0.3 ms) still bridges back-to-back
    # products. Read once, when OpenBLAS loads; a value the user set stays.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
    for path in ([wanted] if wanted else _BLAS_CANDIDATES):
        if path and os.path.exists(path):
            if cpu_kernels.load(path):
                BLAS = path
                return
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            BLAS = path
            return


_preload_blas()

INSTALL_HINT = 'pip install "whisper-mlx[cpu]" (or "whisper-mlx[cuda]" for NVIDIA GPUs)'


def _missing_mlx_backend(e: ImportError) -> bool:
    """On Linux the `mlx` wheel holds no backend: `mlx-cpu` or `mlx-cuda` provides libmlx.so."""
    return sys.platform == "linux" and ("libmlx" in str(e) or getattr(e, "name", None) in ("mlx", "mlx.core"))


try:
    import mlx.core as mx  # noqa: E402  (must come after the BLAS preload)
except ImportError as e:
    if not _missing_mlx_backend(e):
        raise
    raise ImportError(f"whisper-mlx needs MLX with a CPU or CUDA backend, not installed here: {INSTALL_HINT}"
                      f" ({' '.join(str(e).split())})") from None


def set_device(device: str | None) -> str:
    """Select "cpu" or "gpu" (None: the GPU where MLX has one); return the name in use."""
    if device is None:
        device = "gpu" if mx.is_available(mx.gpu) else "cpu"
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
    if device == "gpu" and not mx.is_available(mx.gpu):
        raise RuntimeError("no GPU backend in this MLX build (install whisper-mlx[cuda] on Linux)")
    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    return device


def on_cpu() -> bool:
    """True when MLX computes on the CPU (where fp32 is the fast dtype)."""
    return mx.default_device() == mx.cpu


def report() -> dict:
    """What the runtime runs on: MLX version, device, decoding backend and why, BLAS, platform
    (for `whisper-mlx doctor`)."""
    from .backends import default_name

    name, why = default_name()
    return {
        "mlx": mx.__version__,
        "device": "gpu" if not on_cpu() else "cpu",
        "backend": f"{name} ({why})",
        "gpu_available": bool(mx.is_available(mx.gpu)),
        "blas": BLAS,
        "cpu_kernels": str(cpu_kernels.library_path()) if cpu_kernels.available() else "not loaded (MLX's own)",
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
    }
