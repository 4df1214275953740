"""Lab tools for the fused CUDA decoder step (whisper_mlx/backends/cuda.py `FusedStep`), kept out
of the package: a FusedStep that records per-barrier times, or takes other compile-time shapes,
and the greedy loop with a given step. Used by probe_fused.py and probe_opts.py, on the GPU machine.

`LabStep(backend, n_audio_ctx, timing=True, NSPLIT=4, ...)`: keyword arguments in upper case
override the kernel's compile-time shape (`FusedStep.config`); `timing` patches the production
source's grid barrier to write each block's arrival and departure times (global timer, ns) at every
barrier after the scratch's other contents, read back by `phase_times`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from whisper_mlx.backends.cuda import CudaBackend, FusedStep  # noqa: E402
from whisper_mlx.logit_rules import LogitRules  # noqa: E402

PHASES = ["qkv", "self_out", "cross_q", "cross", "cross_out", "mlp"]  # per layer, between barriers

_TIMED_GRID_SYNC = """__device__ __forceinline__ unsigned wm_clock() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return (unsigned)t;
}
__device__ __forceinline__ void grid_sync(unsigned* bar, unsigned& target, volatile int* fail) {
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned* tim = bar + WM_TIMING;
    const unsigned bi = target / gridDim.x;
    tim[2 * bi * gridDim.x + blockIdx.x] = wm_clock();
    target += gridDim.x;
    __threadfence();
    atomicAdd(bar, 1u);
    if (!*fail) {
      unsigned spins = 0, v;
      while (true) {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
        if (v >= target) break;
        if (++spins > (1u << 22)) {
          *fail = 1;
          break;
        }
      }
    }
    __threadfence();
    tim[(2 * bi + 1) * gridDim.x + blockIdx.x] = wm_clock();
  }
  __syncthreads();
}
"""


class LabStep(FusedStep):
    """FusedStep with shape overrides and optional per-barrier timing (see the module docstring)."""

    def __init__(self, backend: CudaBackend, n_audio_ctx: int, threads: int = 512, blocks_per_sm: int = 1,
                 timing: bool = False, **overrides: int):
        self.timing, self.overrides = timing, overrides
        super().__init__(backend, n_audio_ctx, threads=threads, blocks_per_sm=blocks_per_sm)

    def config(self, *args) -> dict:
        cfg = super().config(*args)
        cfg.update(self.overrides)
        if self.timing:  # the timing area starts after the scratch proper
            cfg["TIMING"] = 32 + 4 * cfg["C"] + cfg["H"] * cfg["NSPLIT"] * (cfg["D"] + 2) + cfg["NB"] * 8
        return cfg

    def source(self) -> tuple[str, str]:
        header, body = super().source()
        if self.timing:
            pattern = re.compile(r"__device__ __forceinline__ void grid_sync\(.*?\n}\n", re.S)
            header, n = pattern.subn(lambda _: _TIMED_GRID_SYNC, header)
            assert n == 1, "grid_sync not found once in the production source"
        return header, body

    def scratch_size(self) -> int:
        if not self.timing:
            return super().scratch_size()
        return self.cfg["TIMING"] + 2 * (len(PHASES) * self.cfg["L"] + 2) * self.cfg["NB"]

    def __call__(self, *args):
        tok, lp, st, scratch = self.launch(*args)
        if self.timing:
            self.last_scratch = scratch
        return tok, lp, st


def phase_times(step: LabStep) -> dict[str, float]:
    """Microseconds per phase of the last step of a LabStep built with timing=True, summed over
    layers: 'work' = mean over blocks of the time from leaving one barrier to reaching the next,
    'critical' = from the first block leaving the previous barrier to the last one reaching this
    one, 'wake' = from that last arrival to the mean departure."""
    cfg = step.cfg
    nb, nbar = cfg["NB"], len(PHASES) * cfg["L"] + 2
    raw = np.asarray(step.last_scratch).view(np.uint32)[cfg["TIMING"]:cfg["TIMING"] + 2 * nbar * nb]
    t = raw.reshape(nbar, 2, nb).astype(np.int64)
    t = (t - int(t[0, 0, 0])) % (1 << 32)  # ns since block 0 reached the first barrier
    names = ["embed"] + PHASES * cfg["L"] + ["logits"]
    out: dict[str, float] = {}
    for i in range(1, nbar):
        arrive, depart_prev = t[i, 0], t[i - 1, 1]
        for key, val in (("work", (arrive - depart_prev).mean()), ("critical", arrive.max() - depart_prev.min()),
                         ("wake", t[i, 1].mean() - arrive.max())):
            out[f"{names[i]} {key}"] = out.get(f"{names[i]} {key}", 0.0) + val / 1e3
    out["total"] = (t[-1, 1].max() - t[0, 0].min()) / 1e3
    return out


def greedy(backend: CudaBackend, features: mx.array, prompt: tuple[int, ...], n: int, step: FusedStep | None,
           rules: LogitRules | None = None) -> tuple[list[int], float]:
    """Greedy decoding of one window through a CudaSession with the given fused step (None: the
    compiled MLX step): (sampled tokens, sum of their log probabilities). Without rules: no
    filters and no end-of-text, so exactly n tokens."""
    n_vocab = backend.dims.n_vocab
    rules = rules or LogitRules(n_vocab=n_vocab, eot=-1, sample_begin=len(prompt))
    session = backend.session(features, 1)
    tokens = np.array([prompt])
    session.prefill(tokens, 0)
    sampled, sums = (session._pipelined(rules, tokens, n, backend.n_ctx, step))
    return sampled[0].tolist(), float(sums[0])
