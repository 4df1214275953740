"""The C decoder's step with a busy process beside it, against the same step on a quiet machine.

Issue 13, point 8: the C decoder splits each step over threads that meet at barriers between
dependent phases; when another process holds one of the cores, a thread that waits at a barrier
must give its core up (sleep on a futex) rather than spin, or the step waits for the scheduler
to give the preempted thread its turn. Goal: a step with one busy process pinned to one of our
cores takes no more than 1.5x the quiet step.

Each round times `--steps` one-token steps of one fresh decoding (prompt of 32 tokens first)
quiet, then again with `python -c "while True: pass"` pinned to one CPU of this process's set,
so quiet and busy alternate and slow drift in the machine's load hits both. Prints one JSON
object: per-round medians (ms per step), their medians, and busy/quiet.

    python benchmarks/busy_step.py MODEL_DIR [--rounds 8] [--steps 48] [--rows 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import whisper_mlx  # noqa: I001  (first: loads the kernels and OpenBLAS before mlx.core)

import mlx.core as mx
import numpy as np
from whisper_mlx import cpu_kernels
from whisper_mlx.backends import backend_for


def step_times(kernel, features, rows: int, steps: int) -> list[float]:
    """Seconds per one-token step over `steps` steps after a 32-token prompt."""
    rng = np.random.default_rng(0)
    cache = cpu_kernels.DecoderCache(kernel, features, rows)
    cpu_kernels.decode_tokens(kernel, cache, rng.integers(0, 50000, (rows, 32)), [-1])
    out = []
    for _ in range(steps):
        token = rng.integers(0, 50000, (rows, 1))
        start = time.perf_counter()
        cpu_kernels.decode_tokens(kernel, cache, token, [0])
        out.append(time.perf_counter() - start)
    return out


def busy_process(cpu: int) -> subprocess.Popen:
    """A process that spins forever on one CPU."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a converted model directory (fp32), or anything load_model takes")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--rows", type=int, default=1, help="rows per step (1: greedy; 5: beam search)")
    parser.add_argument("--busy-cpu", type=int, default=None, help="the CPU the busy process holds "
                        "(default: the first of this process's)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100 or not 1 <= args.steps <= 400 or not 1 <= args.rows <= 64:
        parser.error("--rounds must be in [1, 100], --steps in [1, 400], --rows in [1, 64]")

    model = whisper_mlx.load_model(args.model, backend="cpu")
    backend = backend_for(model)
    if backend.name != "cpu":
        sys.exit(f"{args.model}: the cpu backend cannot run this model here (got {backend.name})")
    kernel = backend.decoder
    features = mx.array(np.random.default_rng(1).normal(size=(1, model.dims.n_audio_ctx, model.dims.n_audio_state))
                        .astype(np.float32))
    cpus = sorted(os.sched_getaffinity(0))
    busy_cpu = cpus[0] if args.busy_cpu is None else args.busy_cpu
    step_times(kernel, features, args.rows, 4)  # warm up: pages, threads, caches

    quiet, busy = [], []
    for _ in range(args.rounds):
        quiet.append(statistics.median(step_times(kernel, features, args.rows, args.steps)))
        proc = busy_process(busy_cpu)
        try:
            time.sleep(0.3)  # let it take its core
            busy.append(statistics.median(step_times(kernel, features, args.rows, args.steps)))
        finally:
            proc.kill()
            proc.wait()

    q, b = statistics.median(quiet), statistics.median(busy)
    print(json.dumps({
        "model": str(args.model), "rows": args.rows, "steps": args.steps, "rounds": args.rounds,
        "cpus": cpus, "busy_cpu": busy_cpu, "decoder_threads": min(cpu_kernels.threads(), cpu_kernels.DECODER_THREADS),
        "quiet_ms": [round(x * 1e3, 3) for x in quiet], "busy_ms": [round(x * 1e3, 3) for x in busy],
        "quiet_median_ms": round(q * 1e3, 3), "busy_median_ms": round(b * 1e3, 3), "busy_over_quiet": round(b / q, 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }, indent=1))


if __name__ == "__main__":
    main()
