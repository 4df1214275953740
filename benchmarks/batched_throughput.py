"""Batched throughput at batch sizes 1/8/16/32 (issue 14's GPU table; runs on any device).

1. Real models, end to end from audio files: `transcribe_many(files, batch_size=B)` (greedy, 30 s
   windows, no VAD), real-time factor = audio seconds / wall seconds, after one warm-up pass.
2. Model shapes with random float16 weights (large-v3, large-v3-turbo, ...): per batch of B
   windows, the encoder pass and 100 decoded tokens per window through the backend's session,
   in windows per second (x30 = real-time factor), as tools/bench_gpu.py times one window.

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

SHAPES = {  # ModelDimensions of the OpenAI checkpoints (no weights needed)
    "large-v3": dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                     n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32),
    "large-v3-turbo": dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                           n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=4),
    "tiny": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                 n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4),
}


def real_model_rows(model_dir: str, clips: list[str], batches: list[int], repeat: int) -> list[dict]:
    from whisper_mlx.audio import load_audio
    from whisper_mlx.batched import transcribe_many

    model = whisper_mlx.load_model(model_dir)
    audio = [load_audio(c) for c in clips] * repeat  # decoded once: the timing is the model's
    seconds = sum(a.size for a in audio) / 16000
    rows = []
    for b in batches:
        run = lambda: list(transcribe_many(audio, model=model, batch_size=b, temperature=0.0, vad_filter=False))  # noqa: E731
        run()  # warm-up: compiled graphs, caches
        start = time.perf_counter()
        results = run()
        wall = time.perf_counter() - start
        assert all(isinstance(r, dict) for _, _, r in results)
        rows.append(dict(model=Path(model_dir).name, batch=b, audio_s=round(seconds, 1), wall_s=round(wall, 3),
                         rtf=round(seconds / wall, 1)))
        print(rows[-1], flush=True)
    return rows


def shape_rows(name: str, batches: list[int], tokens: int, repeats: int) -> list[dict]:
    import mlx.core as mx
    import numpy as np

    from whisper_mlx import backends
    from whisper_mlx.model import ModelDimensions, Whisper

    dims = ModelDimensions(**SHAPES[name])
    model = Whisper(dims)
    model.set_dtype(mx.float16 if not runtime.on_cpu() else mx.float32)
    mx.eval(model.parameters())
    backend = backends.attach(model)
    prompt = np.array([[50258, 50259, 50360, 50364]])
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

        window_batch()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            window_batch()
            times.append(time.perf_counter() - start)
        wall = min(times)
        rows.append(dict(shape=name, backend=backend.name, batch=b, tokens=tokens, wall_s=round(wall, 4),
                         windows_per_s=round(b / wall, 2), rtf=round(30 * b / wall, 1)))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--clips", nargs="*", default=[])
    p.add_argument("--repeat", type=int, default=4, help="times the clip list is repeated (fills large batches)")
    p.add_argument("--shapes", nargs="*", default=[], choices=sorted(SHAPES))
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
