"""On the GPU machine: GELU under MLX's CUDA backend (model.gelu compiled, gpu.gelu_cuda, nn.gelu)
and the large-v3 / turbo encoder with either, random fp16 weights; max differences too."""

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

from whisper_mlx import gpu  # noqa: E402
from whisper_mlx.model import ModelDimensions, gelu  # noqa: E402
from zoo import bench_gpu  # noqa: E402
from zoo.manifest import find_family  # noqa: E402


def ms(fn, n=32, reps=10):
    mx.eval(fn())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(n)])
        ts.append((time.perf_counter() - t0) * 1e3 / n)
    return statistics.median(ts)


for dt in (mx.float16, mx.float32):
    h = (mx.random.normal((1, 1500, 5120)) * 3).astype(dt)
    mx.eval(h)
    ref = gelu(h)
    print(dt, f"model.gelu {ms(lambda: gelu(h)):.3f} ms, gelu_cuda {ms(lambda: gpu.gelu_cuda(h)):.3f} ms, "
          f"nn.gelu {ms(lambda: nn.gelu(h)):.3f} ms; max |gelu_cuda - model.gelu| "
          f"{mx.abs(gpu.gelu_cuda(h).astype(mx.float32) - ref.astype(mx.float32)).max().item():.3g}, "
          f"equal fraction {(gpu.gelu_cuda(h) == ref).astype(mx.float32).mean().item():.6f}", flush=True)

for name in ("large-v3", "large-v3-turbo", "tiny"):
    dims = ModelDimensions(**find_family(name).dims.model_dump())
    model = bench_gpu.random_mlx_model(dims)
    mel = mx.random.normal((1, 2 * dims.n_audio_ctx, dims.n_mels)).astype(mx.float16)
    enc = gpu.GpuEncoder(model)
    new = ms(lambda: enc._forward(mel), n=4)
    a = enc._forward(mel)
    enc.gelu = gelu
    enc._forward = mx.compile(enc.forward)
    old = ms(lambda: enc._forward(mel), n=4)
    b = enc._forward(mel)
    d = mx.abs(a.astype(mx.float32) - b.astype(mx.float32))
    print(f"{name}: encoder with gelu_cuda {new:.2f} ms, with model.gelu {old:.2f} ms; max diff {d.max().item():.3g}, "
          f"mean {d.mean().item():.3g}", flush=True)
    del model, enc
    mx.clear_cache()
