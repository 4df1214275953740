"""On the GPU machine: one shape, one set of FusedStep options, in a process of its own (a kernel
fault poisons the CUDA context): `python3 scripts/device/probe_opts.py SHAPE [KEY=VALUE ...]`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from whisper_mlx import runtime  # noqa: E402

runtime.set_device("gpu")

import mlx.core as mx  # noqa: E402

from whisper_mlx import gpu  # noqa: E402
from whisper_mlx.model import ModelDimensions  # noqa: E402
from zoo import bench_gpu  # noqa: E402
from zoo.manifest import find_family  # noqa: E402

name = sys.argv[1]
opts = {k: int(v) for k, v in (a.split("=") for a in sys.argv[2:])}
timing = bool(opts.pop("timing", 0))
dims = ModelDimensions(**find_family(name).dims.model_dump())
model = bench_gpu.random_mlx_model(dims)
mel = mx.random.normal((1, 2 * dims.n_audio_ctx, dims.n_mels)).astype(mx.float16)
feats = gpu.embed_audio(model, mel)
dec = gpu.decoder_for(model)
prompt = (50258, 50259, 50360, 50364)
fused = gpu.FusedStep(dec, feats.shape[1], timing=timing, **opts)
kw = dict(sot_index=0, eot=-1, no_speech=0, suppress_ids=(), blank_ids=(), timestamp_rules=None)
ref = gpu._greedy(dec, feats, prompt, sample_len=40, fused=None, **kw)[0][0].tolist()
try:
    got = gpu._greedy(dec, feats, prompt, sample_len=40, fused=fused, **kw)[0][0].tolist()
    ok = got == ref
    times = []
    for n in (1, 101, 1, 101, 1, 101):
        t0 = time.perf_counter()
        gpu._greedy(dec, feats, prompt, sample_len=n, fused=fused, **kw)
        times.append((time.perf_counter() - t0) * 1e3)
    step = (min(times[1::2]) - min(times[0::2])) / 100
    print(f"{name} {opts}: same tokens {ok} {'' if ok else (ref[:12], got[:12])} {step:.3f} ms/step", flush=True)
    if timing:
        gpu._greedy(dec, feats, prompt, sample_len=100, fused=fused, **kw)
        t = gpu.phase_times(fused)
        print(f"  kernel total {t.pop('total'):.1f} us (last step, position {len(prompt) + 98})")
        for key in ("work", "critical", "wake"):
            print(f"  {key:8s} " + " ".join(f"{k.split()[0]} {v:.1f}" for k, v in t.items() if k.endswith(key)))
except Exception as e:  # noqa: BLE001
    print(f"{name} {opts}: FAILED {type(e).__name__}: {str(e)[:100]}", flush=True)
