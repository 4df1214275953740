// exact GELU through the rational erf of gelu_coeffs.h, whose text whisper_mlx/backends/cuda.py puts
// before this file's (the constants are written there once, for the C and the CUDA kernels)
__device__ __forceinline__ float gelu_f(float x) { return wm_gelu_one(x); }
