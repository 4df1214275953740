"""Probe (not shipped): where one process's first seconds go on the GPU. Prints seconds since
the start at each step: MLX import, the first GPU computation (CUDA context), whisper_mlx import,
the model load, a first and a second short clip, 16 clips in one batch, the 3.4 min clip.
    python3 scripts/device/startup_timeline.py MODEL_DIR CLIP_DIR [DEVICE, default gpu]"""

import sys
import time

t0 = time.perf_counter()


def mark(what: str) -> None:
    print(f"{time.perf_counter() - t0:8.2f} s  {what}", flush=True)


import whisper_mlx  # noqa: E402  (first: it picks the BLAS before mlx.core loads)
import mlx.core as mx  # noqa: E402

mark("import whisper_mlx, mlx.core")
DEVICE = sys.argv[3] if len(sys.argv) > 3 else "gpu"
mx.set_default_device(mx.gpu if DEVICE == "gpu" else mx.cpu)
mx.eval(mx.ones((4, 4)) @ mx.ones((4, 4)))
mark(f"first {DEVICE} matmul (on a GPU: its context)")
import glob  # noqa: E402

from whisper_mlx import runtime  # noqa: E402
from whisper_mlx.batched import transcribe_many  # noqa: E402

mark("import whisper_mlx.batched")
runtime.set_device(DEVICE)
model = whisper_mlx.load_model(sys.argv[1])
mark("load_model")
clips = sorted(glob.glob(f"{sys.argv[2]}/en_*.wav"))
longs = sorted(glob.glob(f"{sys.argv[2]}/bench_long*.wav"))
for label, files in (("1 short clip", clips[:1]), ("1 short clip again", clips[1:2]),
                     ("16 short clips, batch 16", (clips * 4)[:16]), ("the 3.4 min clip", longs[:1]),
                     ("5 x the 3.4 min clip, batch 16", longs[:1] * 5)):
    if files:
        for _ in transcribe_many(files, model=model, batch_size=16, vad_filter=False):
            pass
        mark(label)
