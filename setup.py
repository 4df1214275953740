"""Build the optional C kernels (csrc/cpu_kernels.c) on Linux; everything else is in pyproject.toml.

The library is loaded with ctypes (no Python API), so one build serves every Python version.
Where it cannot be compiled, the install goes on and whisper_mlx runs on MLX's own CPU kernels.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform == "linux":
    ext_modules.append(
        Extension(
            "whisper_mlx._cpu_kernels",
            sources=["csrc/cpu_kernels.c"],
            include_dirs=["whisper_mlx/assets"],  # gelu_coeffs.h, shared with the CUDA kernels
            extra_compile_args=["-O3", "-ffast-math", "-fvisibility=default"],
            libraries=["dl", "pthread", "m"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
