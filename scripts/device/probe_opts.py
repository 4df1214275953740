"""On the GPU machine: one shape, one set of fused-step options, in a process of its own (a kernel
fault poisons the CUDA context): `python3 scripts/device/probe_opts.py SHAPE [KEY=VALUE ...]`, where
KEY is `timing` (per-phase times of the last step), `threads`, `blocks_per_sm` or an upper-case
compile-time shape value of `FusedStep.config` (NSPLIT, NSO, KB, ...; see fused_lab.LabStep)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from whisper_mlx import runtime  # noqa: E402

runtime.set_device("gpu")

import mlx.core as mx  # noqa: E402

from benchmarks import gpu  # noqa: E402
from fused_lab import LabStep, greedy, phase_times  # noqa: E402
from whisper_mlx.backends import backend_for  # noqa: E402

name = sys.argv[1]
opts = {k: int(v) for k, v in (a.split("=") for a in sys.argv[2:])}
dims = gpu.shape(name)
model = gpu.random_mlx_model(dims)
backend = backend_for(model)
mel = mx.random.normal((1, 2 * dims.n_audio_ctx, dims.n_mels)).astype(mx.float16)
feats = backend.encode(mel)
prompt = tuple(gpu.prompt_tokens(dims))
step = LabStep(backend, feats.shape[1], **opts)
ref = greedy(backend, feats, prompt, 40, None)[0]
try:
    got = greedy(backend, feats, prompt, 40, step)[0]
    ok = got == ref
    times = []
    for n in (1, 101, 1, 101, 1, 101):
        t0 = time.perf_counter()
        greedy(backend, feats, prompt, n, step)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = (min(times[1::2]) - min(times[0::2])) / 100
    print(f"{name} {opts}: same tokens {ok} {'' if ok else (ref[:12], got[:12])} {ms:.3f} ms/step", flush=True)
    if opts.get("timing"):
        greedy(backend, feats, prompt, 100, step)
        t = phase_times(step)
        print(f"  kernel total {t.pop('total'):.1f} us (last step, position {len(prompt) + 98})")
        for key in ("work", "critical", "wake"):
            print(f"  {key:8s} " + " ".join(f"{k.split()[0]} {v:.1f}" for k, v in t.items() if k.endswith(key)))
except Exception as e:  # noqa: BLE001
    print(f"{name} {opts}: FAILED {type(e).__name__}: {str(e)[:100]}", flush=True)
