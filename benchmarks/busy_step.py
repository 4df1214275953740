"""The C decoder's step with a busy process beside it, against the same step on a quiet machine.

Issue 13, point 8: the C decoder splits each step over threads that meet at barriers between
dependent phases; when another process holds one of the cores, a thread that waits at a barrier
must give its core up (sleep on a futex) rather than spin, or the step waits for the scheduler
to give the preempted thread its turn. Goal: a step with one busy process pinned to one of our
cores takes no more than 1.5x the quiet step.

Each round times `--steps` one-token steps of one fresh decoding (prompt of 32 tokens first)
quiet, then again with `python -c "while True: pass"` pinned to one CPU of this process's set,
so quiet and busy alternate and slow drift in the machine's load hits both. `--against` (may be
repeated) times other builds of csrc/cpu_kernels.c (same C API, e.g. an earlier commit's) in the
same rounds, side by side. Prints one JSON object: for each build the per-round medians (ms per
step), their medians, busy/quiet of those medians, and the median of the per-round busy/quiet
ratios (paired: each round's quiet and busy runs are seconds apart).

    python -m benchmarks.busy_step MODEL_DIR [--rounds 8] [--steps 48] [--rows 1] [--against OTHER.so ...]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

import whisper_mlx  # noqa: I001  (first: loads the kernels and OpenBLAS before mlx.core)

import mlx.core as mx
import numpy as np
from whisper_mlx import cpu_kernels, runtime
from whisper_mlx.backends import backend_for


def other_build(path: str) -> ctypes.CDLL:
    """Another build of the kernels, bound to the same BLAS, with this build's argument types."""
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError as e:
        sys.exit(f"--against {path}: cannot load it ({e})")
    lib.wm_bind_blas.argtypes = [ctypes.c_char_p]
    if lib.wm_bind_blas(runtime.BLAS.encode()) != 0:
        sys.exit(f"{path}: could not bind it to {runtime.BLAS}")
    for name in ("wm_decode_tokens", "wm_cross_kv"):
        getattr(lib, name).argtypes = getattr(cpu_kernels._LIB, name).argtypes
    return lib


def step_times(kernel, features, rows: int, steps: int, lib: ctypes.CDLL | None = None) -> list[float]:
    """Seconds per one-token step over `steps` steps after a 32-token prompt (through `lib`, a
    build of the kernels, where given)."""
    if lib is not None:
        own, cpu_kernels._LIB = cpu_kernels._LIB, lib
        try:
            return step_times(kernel, features, rows, steps)
        finally:
            cpu_kernels._LIB = own
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
    parser.add_argument("--against", action="append", default=[], help="another build of the kernels (.so) to "
                        "time alongside (repeatable)")
    parser.add_argument("--busy-cpu", type=int, default=None, help="the CPU the busy process holds "
                        "(default: the first of this process's)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100 or not 1 <= args.steps <= 400 or not 1 <= args.rows <= 64:
        parser.error("--rounds must be in [1, 100], --steps in [1, 400], --rows in [1, 64]")

    try:
        model = whisper_mlx.load_model(args.model, backend="cpu")
    except (ValueError, OSError) as e:  # ModelLoadError is a ValueError
        sys.exit(f"busy_step: {e}")
    backend = backend_for(model)
    if backend.name != "cpu":
        sys.exit(f"{args.model}: the cpu backend cannot run this model here (got {backend.name})")
    kernel = backend.decoder
    features = mx.array(np.random.default_rng(1).normal(size=(1, model.dims.n_audio_ctx, model.dims.n_audio_state))
                        .astype(np.float32))
    cpus = sorted(os.sched_getaffinity(0))
    busy_cpu = cpus[0] if args.busy_cpu is None else args.busy_cpu
    builds = {"this": None}
    for path in args.against:
        builds[path] = other_build(path)
    for lib in builds.values():
        step_times(kernel, features, args.rows, 4, lib)  # warm up: pages, threads, caches

    quiet = {name: [] for name in builds}
    busy = {name: [] for name in builds}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, lib in builds.items():
            quiet[name].append(statistics.median(step_times(kernel, features, args.rows, args.steps, lib)))
        proc = busy_process(busy_cpu)
        try:
            time.sleep(0.3)  # let it take its core
            for name, lib in builds.items():
                busy[name].append(statistics.median(step_times(kernel, features, args.rows, args.steps, lib)))
        finally:
            proc.kill()
            proc.wait()

    results = {}
    for name in builds:
        q, b = statistics.median(quiet[name]), statistics.median(busy[name])
        results[name] = {
            "quiet_ms": [round(x * 1e3, 3) for x in quiet[name]], "busy_ms": [round(x * 1e3, 3) for x in busy[name]],
            "quiet_median_ms": round(q * 1e3, 3), "busy_median_ms": round(b * 1e3, 3),
            "busy_over_quiet": round(b / q, 3),
            "busy_over_quiet_paired": round(statistics.median(y / x for x, y in zip(quiet[name], busy[name])), 3),
        }
    print(json.dumps({
        "model": str(args.model), "rows": args.rows, "steps": args.steps, "rounds": args.rounds,
        "cpus": cpus, "busy_cpu": busy_cpu, "decoder_threads": min(cpu_kernels.threads(), cpu_kernels.DECODER_THREADS),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "builds": results,
    }, indent=1))


if __name__ == "__main__":
    main()
