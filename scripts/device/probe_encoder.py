"""On the GPU machine: the large-v3 encoder's operations one at a time, MLX (as the CUDA backend's
encoder graph runs them) against PyTorch (as openai-whisper runs them), fp16, 1500 x 1280
activations; ms per call (median of 20 batches of 32 calls, so launch overhead is amortized as in the compiled encoder)."""

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
import torch  # noqa: E402
import torch.nn.functional as tf  # noqa: E402

from whisper_mlx.backends.cuda import gelu_cuda  # noqa: E402

T, C, H = 1500, 1280, 20
D = C // H


def mlx_ms(fn, n=32, reps=20):
    mx.eval(fn())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(n)])
        ts.append((time.perf_counter() - t0) * 1e3 / n)
    return statistics.median(ts)


def torch_ms(fn, n=32, reps=20):
    fn()
    torch.cuda.synchronize()
    ts = []
    with torch.no_grad():
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t0) * 1e3 / n)
    return statistics.median(ts)


f16 = mx.float16
x = mx.random.normal((1, T, C)).astype(f16)
w_qkv, b_qkv = (mx.random.normal((3 * C, C)) * 0.02).astype(f16), mx.zeros((3 * C,), f16)
w_o, b_o = (mx.random.normal((C, C)) * 0.02).astype(f16), mx.zeros((C,), f16)
w1, b1 = (mx.random.normal((4 * C, C)) * 0.02).astype(f16), mx.zeros((4 * C,), f16)
w2, b2 = (mx.random.normal((C, 4 * C)) * 0.02).astype(f16), mx.zeros((C,), f16)
ln_w, ln_b = mx.ones((C,), f16), mx.zeros((C,), f16)
q = mx.random.normal((1, H, T, D)).astype(f16)
h4 = mx.random.normal((1, T, 4 * C)).astype(f16)
mel = mx.random.normal((1, 3000, 128)).astype(f16)
conv1_w = (mx.random.normal((C, 3, 128)) * 0.02).astype(f16)
conv2_w = (mx.random.normal((C, 3, C)) * 0.02).astype(f16)
qt = mx.random.normal((1, T, 3 * C)).astype(f16)
x3000 = mx.random.normal((1, 2 * T, C)).astype(f16)
mx.eval(x3000, x, w_qkv, b_qkv, w_o, b_o, w1, b1, w2, b2, ln_w, ln_b, q, h4, mel, conv1_w, conv2_w, qt)

dev = "cuda"
tx = torch.randn(1, T, C, device=dev, dtype=torch.float16)
tw_qkv, tb_qkv = torch.randn(3 * C, C, device=dev, dtype=torch.float16) * 0.02, torch.zeros(3 * C, device=dev, dtype=torch.float16)
tw_o, tb_o = torch.randn(C, C, device=dev, dtype=torch.float16) * 0.02, torch.zeros(C, device=dev, dtype=torch.float16)
tw1, tb1 = torch.randn(4 * C, C, device=dev, dtype=torch.float16) * 0.02, torch.zeros(4 * C, device=dev, dtype=torch.float16)
tw2, tb2 = torch.randn(C, 4 * C, device=dev, dtype=torch.float16) * 0.02, torch.zeros(C, device=dev, dtype=torch.float16)
tq = torch.randn(1, H, T, D, device=dev, dtype=torch.float16)
th4 = torch.randn(1, T, 4 * C, device=dev, dtype=torch.float16)
tmel = torch.randn(1, 128, 3000, device=dev, dtype=torch.float16)
tc1 = torch.randn(C, 128, 3, device=dev, dtype=torch.float16) * 0.02
tc2 = torch.randn(C, C, 3, device=dev, dtype=torch.float16) * 0.02
tqkv = torch.randn(1, T, 3 * C, device=dev, dtype=torch.float16)
tln = torch.nn.LayerNorm(C).to(dev)
tx3000 = torch.randn(1, C, 2 * T, device=dev, dtype=torch.float16)

rows = [
    ("qkv addmm 1500x1280 @ 1280x3840", lambda: mx.addmm(b_qkv, x, w_qkv.T), lambda: tf.linear(tx, tw_qkv, tb_qkv)),
    ("out addmm 1280x1280", lambda: mx.addmm(b_o, x, w_o.T), lambda: tf.linear(tx, tw_o, tb_o)),
    ("fc1 addmm 1280x5120", lambda: mx.addmm(b1, x, w1.T), lambda: tf.linear(tx, tw1, tb1)),
    ("fc2 addmm 5120x1280", lambda: mx.addmm(b2, h4, w2.T), lambda: tf.linear(th4, tw2, tb2)),
    ("fc1 matmul no bias", lambda: x @ w1.T, lambda: tx @ tw1.T),
    ("sdpa (1, 20, 1500, 64)", lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=D**-0.5),
     lambda: tf.scaled_dot_product_attention(tq, tq, tq)),
    ("sdpa from fused qkv (transposed views)",
     lambda: mx.fast.scaled_dot_product_attention(*(qt[..., i * C:(i + 1) * C].reshape(1, T, H, D).transpose(0, 2, 1, 3) for i in range(3)), scale=D**-0.5),
     lambda: tf.scaled_dot_product_attention(*(tqkv[..., i * C:(i + 1) * C].view(1, T, H, D).permute(0, 2, 1, 3) for i in range(3)))),
    ("layer norm", lambda: mx.fast.layer_norm(x, ln_w, ln_b, 1e-5), lambda: tln(tx.float()).half()),
    ("gelu 1500x5120 (CUDA kernel)", lambda: gelu_cuda(h4), lambda: tf.gelu(th4)),
    ("gelu 1500x5120 (nn.gelu)", lambda: nn.gelu(h4), lambda: tf.gelu(th4)),
    ("conv1 3000x128 -> 1280", lambda: mx.conv1d(mel, conv1_w, padding=1), lambda: tf.conv1d(tmel, tc1, padding=1)),
    ("conv2 3000x1280, stride 2", lambda: mx.conv1d(x3000, conv2_w, padding=1, stride=2),
     lambda: tf.conv1d(tx3000, tc2, padding=1, stride=2)),
]
print(f"{'op':40s} {'mlx ms':>8s} {'torch ms':>9s}", flush=True)
for name, fm, ft in rows:
    try:
        print(f"{name:40s} {mlx_ms(fm):8.3f} {torch_ms(ft):9.3f}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"{name:40s} FAILED {e}", flush=True)
