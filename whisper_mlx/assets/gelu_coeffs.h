/* whisper_mlx's GELU for one float: 0.5 x (1 + erf(x / sqrt 2)), erf as Eigen's float rational
 * approximation erf(z) = z p(z^2) / q(z^2) on z clamped to [-4, 4] (max error 4e-7), evaluated in
 * float32. The one place its constants are written, read by both kinds of kernels:
 * - the C kernels: csrc/cpu_kernels.c includes this file (setup.py adds whisper_mlx/assets to the
 *   include path);
 * - the CUDA kernels: MLX compiles them at run time from source text, so backends/cuda.py puts
 *   this file's text before assets/gelu.cuh's, whose gelu_f calls wm_gelu_one.
 * Plain C that is also CUDA C++ (compiled by NVRTC, which defines __CUDACC__). */
#ifndef WHISPER_MLX_GELU_COEFFS_H
#define WHISPER_MLX_GELU_COEFFS_H

#if defined(__CUDACC__)
#define WM_GELU_FN __device__ __forceinline__
#else
#define WM_GELU_FN static inline __attribute__((always_inline))
#endif

WM_GELU_FN float wm_gelu_one(float x) {
    float z = x * 0.7071067811865476f;
    z = z < -4.0f ? -4.0f : (z > 4.0f ? 4.0f : z);
    const float z2 = z * z;
    float p = -2.72614225801306e-10f;
    p = p * z2 + 2.77068142495902e-08f;
    p = p * z2 + -2.10102402082508e-06f;
    p = p * z2 + -5.69250639462346e-05f;
    p = p * z2 + -7.34990630326855e-04f;
    p = p * z2 + -2.95459980854025e-03f;
    p = p * z2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * z2 + -2.13374055278905e-04f;
    q = q * z2 + -1.68282697438203e-03f;
    q = q * z2 + -7.37332916720468e-03f;
    q = q * z2 + -1.42647390514189e-02f;
    return 0.5f * x * (1.0f + z * p / q);
}

#endif
