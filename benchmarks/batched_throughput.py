"""Batched throughput at batch sizes 1/8/16/32 (issue 14's GPU table; runs on any device).

1. Real models, end to end from audio files: `transcribe_many(files, batch_size=B)` (greedy, 30 s
   windows, no VAD), real-time factor = audio seconds / wall seconds, after one warm-up pass.
2. Model shapes with random float16 weights (large-v3, large-v3-turbo, ...): per batch of B
   windows, the encoder pass and 100 decoded tokens per window through the backend's session,
   in windows per second (x30 = real-time factor), as `benchmarks.gpu` times one window; the shapes
   are its table (every family's manifest dims).

    python -m benchmarks.batched_throughput --models DIR [DIR ...] --clips A.wav B.wav ... \
        --shapes large-v3 large-v3-turbo --batch 1 8 16 32 --device gpu --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import whisper_mlx  # noqa: F401  (first: BLAS preload before mlx.core)
from whisper_mlx import runtime

from benchmarks import core, gpu


def real_model_rows(model_dir: str, clips: list[str], batches: list[int], repeat: int) -> list[dict]:
    from whisper_mlx.audio import load_audio
    from whisper_mlx.batched import transcribe_many

    model = whisper_mlx.load_model(model_dir)
    audio = [load_audio(c) for c in clips] * repeat  # decoded once: the timing is the model's
    seconds = sum(a.size for a in audio) / 16000
    rows = []
    for b in batches:
        out: dict = {}

        def run() -> None:
            out["results"] = list(transcribe_many(audio, model=model, batch_size=b, temperature=0.0, vad_filter=False))

        wall = core.time_call(run, 1, warmup=1)  # warm-up: compiled graphs, caches
        assert all(isinstance(r, dict) for _, _, r in out["results"])
        rows.append(dict(model=Path(model_dir).name, batch=b, audio_s=round(seconds, 1), wall_s=round(wall, 3),
                         rtf=round(seconds / wall, 1)))
        print(rows[-1], flush=True)
    return rows


def shape_rows(name: str, batches: list[int], tokens: int, repeats: int) -> list[dict]:
    import mlx.core as mx
    import numpy as np

    from whisper_mlx import backends

    dims = gpu.shape(name)
    model = gpu.random_mlx_model(dims, dtype=mx.float16 if not runtime.on_cpu() else mx.float32)
    backend = backends.attach(model)
    prompt = np.array([gpu.prompt_tokens(dims)])
    rows = []
    for b in batches:
        mel = mx.random.normal((b, 2 * dims.n_audio_ctx, dims.n_mels)).astype(model.encoder.conv1.weight.dtype)

        def window_batch() -> None:
            session = backend.session(backend.encode(mel), b)
            session.prefill(np.repeat(prompt, b, axis=0), 0)
            step = np.full(b, 440)
            for _ in range(tokens):
                session.feed(step)
            session.pending_logits()  # waits for the last step

        wall = core.time_call(window_batch, repeats, warmup=1, stat="min")  # the fastest, after a warm-up
        rows.append(dict(shape=name, backend=backend.name, batch=b, tokens=tokens, wall_s=round(wall, 4),
                         windows_per_s=round(b / wall, 2), rtf=round(30 * b / wall, 1)))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--clips", nargs="*", default=[])
    p.add_argument("--repeat", type=int, default=4, help="times the clip list is repeated (fills large batches)")
    p.add_argument("--shapes", nargs="*", default=[], choices=gpu.shape_names(), metavar="FAMILY",
                   help="families run with random weights at their manifest's dims")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8, 16, 32])
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=["cpu", "gpu"], default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    device = runtime.set_device(args.device)
    report = dict(date=time.strftime("%Y-%m-%d"), device=device, facts=runtime.report(), machine=platform.node(),
                  real=[], shapes=[])
    for model_dir in args.models:
        report["real"] += real_model_rows(model_dir, args.clips, args.batch, args.repeat)
    for name in args.shapes:
        report["shapes"] += shape_rows(name, args.batch, args.tokens, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
