"""On the GPU machine: the fused CUDA decoder step (whisper_mlx/backends/cuda.py `FusedStep`) against
the compiled MLX step, random fp16/fp32 weights: same tokens and log probabilities, and the time per
step.

  python3 scripts/device/probe_fused.py [shape[:fp16|fp32] ...]   (default: tiny:fp32 tiny base
  large-v3-turbo large-v3)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from whisper_mlx import runtime  # noqa: E402

runtime.set_device("gpu")

import mlx.core as mx  # noqa: E402

from benchmarks import gpu  # noqa: E402
from fused_lab import greedy  # noqa: E402
from whisper_mlx.backends import backend_for  # noqa: E402
from whisper_mlx.backends.cuda import FusedStep, sm_count  # noqa: E402
from whisper_mlx.logit_rules import LogitRules  # noqa: E402


def med(fn, reps=5, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main(shapes):
    print("mlx", mx.__version__, "SMs", sm_count(), flush=True)
    for spec in shapes:
        name, _, dt = spec.partition(":")
        dtype = {"": mx.float16, "fp16": mx.float16, "fp32": mx.float32}[dt]
        dims = gpu.shape(name)
        model = gpu.random_mlx_model(dims, dtype=dtype)
        backend = backend_for(model)
        mel = mx.random.normal((1, 2 * dims.n_audio_ctx, dims.n_mels)).astype(dtype)
        feats = backend.encode(mel)
        mx.eval(feats)
        prompt = tuple(gpu.prompt_tokens(dims))
        ts_begin = dims.n_vocab - 1501
        with_rules = LogitRules(n_vocab=dims.n_vocab, eot=50257, sample_begin=len(prompt), timestamps=True,
                                timestamp_begin=ts_begin, no_timestamps=ts_begin - 1, max_initial_timestamp=50)
        t0 = time.perf_counter()
        fused = FusedStep(backend, feats.shape[1])
        print(f"{spec}: cfg {fused.cfg}, built in {time.perf_counter() - t0:.2f} s", flush=True)
        for label, rules in (("no rules", None), ("timestamp rules", with_rules)):
            try:
                ta, la = greedy(backend, feats, prompt, 60, None, rules)
                t0 = time.perf_counter()
                tb, lb = greedy(backend, feats, prompt, 60, fused, rules)
                first = time.perf_counter() - t0
                same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
                print(f"  {label}: tokens equal {ta == tb} (common prefix {same}/{len(ta)},{len(tb)}), "
                      f"sum logprob {la:.5f} vs {lb:.5f}, first fused run {first:.2f} s", flush=True)
                if ta != tb:
                    print("    mlx  ", ta[:40], "\n    fused", tb[:40], flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"  {label}: FAILED {type(e).__name__}: {e}", flush=True)
        for label, f in (("mlx compiled step", None), ("fused", fused)):
            try:
                one = med(lambda: greedy(backend, feats, prompt, 1, f))
                many = med(lambda: greedy(backend, feats, prompt, 101, f))
                print(f"  {label}: {(many - one) / 100:.3f} ms/step (1 token {one:.2f} ms, 101 tokens {many:.1f} ms)",
                      flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"  {label}: FAILED {type(e).__name__}: {e}", flush=True)
        del model, backend, fused
        mx.clear_cache()


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny:fp32", "tiny", "base", "large-v3-turbo", "large-v3"])
