"""On the GPU machine: GELU under MLX's CUDA backend (the CUDA backend's `gelu_cuda` kernel against
MLX's compiled nn.gelu) and the large-v3 / turbo / tiny encoder with either, random fp16 weights;
max differences too."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from whisper_mlx import runtime  # noqa: E402

runtime.set_device("gpu")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from benchmarks import gpu  # noqa: E402
from whisper_mlx.backends import backend_for  # noqa: E402
from whisper_mlx.backends.cuda import gelu_cuda  # noqa: E402


def ms(fn, n=32, reps=10):
    mx.eval(fn())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(n)])
        ts.append((time.perf_counter() - t0) * 1e3 / n)
    return statistics.median(ts)


compiled_gelu = mx.compile(nn.gelu)
for dt in (mx.float16, mx.float32):
    h = (mx.random.normal((1, 1500, 5120)) * 3).astype(dt)
    mx.eval(h)
    ref = nn.gelu(h.astype(mx.float32))
    print(dt, f"nn.gelu compiled {ms(lambda: compiled_gelu(h)):.3f} ms, gelu_cuda {ms(lambda: gelu_cuda(h)):.3f} ms; "
          f"max |gelu_cuda - nn.gelu in float32| "
          f"{mx.abs(gelu_cuda(h).astype(mx.float32) - ref).max().item():.3g}", flush=True)

for name in ("large-v3", "large-v3-turbo", "tiny"):
    dims = gpu.shape(name)
    model = gpu.random_mlx_model(dims)
    mel = mx.random.normal((1, 2 * dims.n_audio_ctx, dims.n_mels)).astype(mx.float16)
    backend = backend_for(model)
    new = ms(lambda: backend.encode(mel), n=4)
    a = backend.encode(mel)
    backend.gelu = nn.gelu
    backend._encode = mx.compile(backend._encoder_graph)
    old = ms(lambda: backend.encode(mel), n=4)
    b = backend.encode(mel)
    d = mx.abs(a.astype(mx.float32) - b.astype(mx.float32))
    print(f"{name}: encoder with gelu_cuda {new:.2f} ms, with nn.gelu {old:.2f} ms; max diff {d.max().item():.3g}, "
          f"mean {d.mean().item():.3g}", flush=True)
    del model, backend
    mx.clear_cache()
