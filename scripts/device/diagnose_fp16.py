"""On the GPU machine: find where fp16 on MLX CUDA departs from fp32 (empty transcripts seen).
Compares ops and whole-model outputs fp16 vs fp32 on the GPU, then transcribes one clip with
candidate fixes swapped in, one at a time."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402

import whisper_mlx  # noqa: E402
import whisper_mlx.model as wm  # noqa: E402
from conftest import CACHE  # noqa: E402
from whisper_mlx import runtime  # noqa: E402
from whisper_mlx.audio import load_audio, log_mel_spectrogram, pad_or_trim  # noqa: E402


def err(a, b) -> str:
    a, b = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
    bad = int((~np.isfinite(a)).sum())
    rel = float(np.linalg.norm(np.nan_to_num(a - b)) / (np.linalg.norm(b) + 1e-30))
    return f"rel {rel:.2e} nonfinite {bad} max|ref| {np.abs(b).max():.3g}"


runtime.set_device(sys.argv[1] if len(sys.argv) > 1 else "gpu")
mx.random.seed(0)
x = mx.random.normal((1, 1500, 1536)) * 3
print("gelu (compiled rational)   ", err(wm.gelu(x.astype(mx.float16)), nn.gelu(x)))
print("gelu nn.gelu fp16          ", err(nn.gelu(x.astype(mx.float16)), nn.gelu(x)))
q, k, v = (mx.random.normal((1, 6, 1500, 64)) for _ in range(3))
ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125)
h = lambda t: t.astype(mx.float16)  # noqa: E731
print("sdpa 1500x1500 no mask     ", err(mx.fast.scaled_dot_product_attention(h(q), h(k), h(v), scale=0.125), ref))
for t in (4, 1):
    qd, kd, vd = (mx.random.normal((1, 6, t, 64)) for _ in range(3))
    mask = wm.causal_mask(t, 0, mx.float32)
    r = mx.fast.scaled_dot_product_attention(qd, kd, vd, scale=0.125, mask=mask if t > 1 else None)
    got = mx.fast.scaled_dot_product_attention(h(qd), h(kd), h(vd), scale=0.125,
                                               mask=wm.causal_mask(t, 0, mx.float16) if t > 1 else None)
    print(f"sdpa causal t={t} -inf mask   ", err(got, r))
    if t > 1:
        got = mx.fast.scaled_dot_product_attention(h(qd), h(kd), h(vd), scale=0.125, mask="causal")
        print(f"sdpa causal t={t} 'causal'    ", err(got, r))
    kl, vl = (mx.random.normal((1, 6, 37, 64)) for _ in range(2))
    r = mx.fast.scaled_dot_product_attention(qd, kl, vl, scale=0.125)
    print(f"sdpa q={t} k=37 no mask      ", err(mx.fast.scaled_dot_product_attention(h(qd), h(kl), h(vl), scale=0.125), r))

clip = sorted((CACHE / "clips").glob("en_weather-*.wav"))[0]
m32 = whisper_mlx.load_model(CACHE / "models" / "tiny.en-fp16", dtype="float32")
m16 = whisper_mlx.load_model(CACHE / "models" / "tiny.en-fp16")
mel = pad_or_trim(log_mel_spectrogram(load_audio(str(clip))), 3000, axis=0)[None]
f32, f16 = m32.embed_audio(mel), m16.embed_audio(mel)
print("encoder fp16 vs fp32       ", err(f16, f32))
x32 = mel.astype(mx.float32)
x16 = mel.astype(mx.float16)
a32, a16 = wm.gelu(m32.encoder.conv1(x32)), wm.gelu(m16.encoder.conv1(x16))
print("  conv1+gelu               ", err(a16, a32))
a32, a16 = wm.gelu(m32.encoder.conv2(a32)), wm.gelu(m16.encoder.conv2(a16))
print("  conv2+gelu               ", err(a16, a32))
a32 = a32 + m32.encoder.positional_embedding
a16 = a16 + m16.encoder.positional_embedding.astype(mx.float16)
for i, (b32, b16) in enumerate(zip(m32.encoder.blocks, m16.encoder.blocks)):
    a32, _, _ = b32(a32)
    a16, _, _ = b16(a16)
    print(f"  block {i}                  ", err(a16, a32))
tok = mx.array([[50257, 50362]])
l32 = m32.decoder.logits(m32.decoder(tok, m32.decoder.cross_kv(f32))[0])
l16 = m16.decoder.logits(m16.decoder(tok, m16.decoder.cross_kv(f16))[0])
print("decoder logits fp16 vs fp32", err(l16, l32))
l16b = m16.decoder.logits(m16.decoder(tok, m16.decoder.cross_kv(f32.astype(mx.float16)))[0])
print("  decoder fp16 on fp32 feat", err(l16b, l32))


def text(label: str) -> None:
    model = whisper_mlx.load_model(CACHE / "models" / "tiny.en-fp16")
    r = whisper_mlx.transcribe(str(clip), model=model, temperature=0.0, word_timestamps=True)
    print(f"{label:<28}{r['text']!r}", flush=True)


text("as is")
orig_gelu, orig_on_cpu, orig_mask = wm.gelu, runtime.on_cpu, wm.causal_mask
wm.gelu = nn.gelu
text("gelu = nn.gelu")
wm.gelu = orig_gelu
wm.causal_mask = lambda t, o, d: orig_mask(t, o, mx.float32).astype(d) * 0 + mx.where(
    mx.arange(o + t)[None, :] > mx.arange(t)[:, None] + o, mx.array(-6e4, d), mx.array(0, d))
text("mask -6e4 instead of -inf")
wm.causal_mask = orig_mask
wm.runtime.on_cpu = lambda: True  # the encoder's base-2 attention; decoder unaffected
text("encoder base-2 attention")
wm.runtime.on_cpu = orig_on_cpu
