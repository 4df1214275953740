"""Side-by-side GPU benchmark: whisper_mlx on MLX's CUDA backend against openai-whisper on PyTorch
CUDA, both fp16, in one process on one GPU (issue 7). Also runs on the CPU, slowly, to check itself.

Every MLX timing goes through the runtime's own code (the model's decoding backend, the MLX-graph
backend for comparison, `transcribe`); PyTorch runs openai-whisper's model and its kv-cache hooks
the way its decoder loop does.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from whisper_mlx import runtime  # noqa: F401  (before mlx.core)

import mlx.core as mx
import numpy as np

from whisper_mlx.backends import backend_for
from whisper_mlx.backends.mlx import MlxBackend
from whisper_mlx.logit_rules import LogitRules
from whisper_mlx.model import ModelDimensions, Whisper


@dataclass
class Row:
    """One measured quantity for both runtimes (milliseconds unless `unit` says otherwise)."""

    model: str
    what: str
    mlx: float
    torch: float | None = None
    unit: str = "ms"
    note: str = ""

    @property
    def speedup(self) -> float | None:
        return self.torch / self.mlx if self.torch and self.mlx else None


@dataclass
class Report:
    device: str
    rows: list[Row] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def as_dict(self) -> dict:
        return {"device": self.device, "facts": self.facts, "rows": [asdict(r) | {"speedup": r.speedup} for r in self.rows]}


def format_row(r: Row) -> str:
    t = f"{r.torch:10.2f}" if r.torch is not None else f"{'-':>10}"
    s = f"{r.speedup:6.2f}x" if r.speedup else f"{'-':>7}"
    return f"| {r.model:<16} | {r.what:<34} | {r.mlx:10.2f} | {t} | {s} | {r.unit:<5} | {r.note} |"


def table(report: Report) -> str:
    """The result as a Markdown table (speedup: PyTorch time / whisper_mlx time)."""
    head = "| model | measurement | whisper_mlx | openai-whisper (PyTorch) | speedup | unit | note |\n"
    head += "| --- | --- | ---: | ---: | ---: | --- | --- |\n"
    return head + "\n".join(format_row(r) for r in report.rows) + "\n"


def median_time(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Median wall time of fn() in ms; fn must block until its device work is done."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---- ceilings --------------------------------------------------------------------------------


def mlx_copy_bandwidth(n_bytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus bytes written."""
    src = mx.random.uniform(shape=(n_bytes // 2,)).astype(mx.float16)
    mx.eval(src)
    ms = median_time(lambda: mx.eval(src + 1), reps)  # one read, one write
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def torch_copy_bandwidth(n_bytes: int = 1 << 30, reps: int = 10) -> float:
    import torch

    src = torch.rand(n_bytes // 2, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)

    def run():
        dst.copy_(src)
        torch.cuda.synchronize()

    return 2 * n_bytes / (median_time(run, reps) * 1e-3) / 1e9


def decoder_bytes_per_token(model: Whisper) -> int:
    """Weight bytes one decoder step must read: every decoder weight except the cross-attention
    key/value projections (applied once per window) and the unused positional rows."""
    from mlx.utils import tree_flatten

    total = 0
    for name, p in tree_flatten(model.decoder.parameters()):
        if ".cross_attn.key." in name or ".cross_attn.value." in name or name == "positional_embedding":
            continue
        total += p.nbytes
    return total


# ---- random-weight models at full size --------------------------------------------------------


def random_mlx_model(dims: ModelDimensions, dtype=mx.float16, seed: int = 0) -> Whisper:
    """whisper_mlx's Whisper with MLX's default random init, in `dtype`, on the current device."""
    mx.random.seed(seed)
    model = Whisper(dims)
    model.decoder.positional_embedding = mx.random.normal((dims.n_text_ctx, dims.n_text_state)) * 0.01
    model.set_dtype(dtype)
    model.eval()
    mx.eval(model.parameters())
    return model


def random_torch_model(dims: ModelDimensions, seed: int = 0):
    import torch
    import whisper.model

    torch.manual_seed(seed)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**asdict(dims)))
    model = model.to("cuda").half().eval()
    for m in model.modules():  # openai-whisper's LayerNorm computes in float32 with float32 weights
        if isinstance(m, torch.nn.LayerNorm):
            m.float()
    return model


def mlx_greedy_fixed(model: Whisper, mel: mx.array, prompt: list[int], n_tokens: int) -> tuple[float, float, list[int]]:
    """Encoder + `n_tokens` greedy steps with no early stop, through the MLX-graph backend (model.py
    as it is; a host round trip per token): returns (encoder ms, mean ms per single-token step,
    tokens)."""
    backend = MlxBackend(model)
    t0 = time.perf_counter()
    features = backend.encode(mel)
    mx.eval(features)
    t1 = time.perf_counter()
    session = backend.session(features, 1)
    tokens = np.array([prompt])
    session.prefill(tokens, 0)
    steps = []
    for _ in range(n_tokens):
        s0 = time.perf_counter()
        picked = mx.argmax(session.pending, axis=-1)
        nxt = np.array(picked).astype(np.int64)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        session.feed(nxt)
        steps.append((time.perf_counter() - s0) * 1e3)
    return (t1 - t0) * 1e3, statistics.median(steps[1:]), tokens[0, len(prompt):].tolist()


def mlx_runtime_greedy_fixed(model: Whisper, mel: mx.array, prompt: list[int], n_tokens: int,
                             reps: int = 3) -> tuple[float, float]:
    """The model's decoding backend (on a CUDA GPU the CUDA backend: compiled encoder, the greedy
    loop with the filters on the device, next step queued before the host reads a token, the step
    as one CUDA kernel), with no early stop: returns (encoder ms, ms per step), the step cost as
    (time for n_tokens - time for 1) / (n_tokens - 1)."""
    backend = backend_for(model)
    enc = median_time(lambda: mx.eval(backend.encode(mel)), reps=10)
    features = backend.encode(mel)
    mx.eval(features)
    rules = LogitRules(n_vocab=model.dims.n_vocab, eot=-1, sample_begin=len(prompt))  # no filters, no end
    tokens = np.array([prompt])

    def run(n: int):
        session = backend.session(features, 1)
        session.prefill(tokens, 0)
        session.greedy(rules, tokens, n, model.dims.n_text_ctx)

    one = median_time(lambda: run(1), reps=reps)
    many = median_time(lambda: run(n_tokens), reps=reps, warmup=1)
    return enc, (many - one) / (n_tokens - 1)


def torch_greedy_fixed(model, mel, prompt: list[int], n_tokens: int) -> tuple[float, float, list[int]]:
    """The same for openai-whisper: its kv-cache hooks and decoder call, as its decoding loop."""
    import torch

    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        features = model.encoder(mel)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        cache, hooks = model.install_kv_cache_hooks()
        tokens = torch.tensor([prompt], device="cuda")
        steps = []
        try:
            for i in range(n_tokens):
                s0 = time.perf_counter()
                feed = tokens if i == 0 else tokens[:, -1:]
                logits = model.decoder(feed, features, kv_cache=cache)[:, -1].float()
                nxt = logits.argmax(-1).cpu()  # the host needs each token, as in openai-whisper's loop
                tokens = torch.cat([tokens, nxt[:, None].to("cuda")], dim=1)
                steps.append((time.perf_counter() - s0) * 1e3)
        finally:
            for h in hooks:
                h.remove()
    return (t1 - t0) * 1e3, statistics.median(steps[1:]), tokens[0, len(prompt):].tolist()


def bench_shape(report: Report, name: str, dims: ModelDimensions, n_tokens: int = 100, reps: int = 3,
                with_torch: bool = True, bandwidth: float | None = None) -> None:
    """Encoder pass, decoder step and encoder + n_tokens steps, random fp16 weights, batch 1."""
    prompt = [50258, 50259, 50360, 50364][: 4 if dims.n_vocab >= 51865 else 3]
    model = random_mlx_model(dims)
    mel = mx.random.normal((1, 2 * dims.n_audio_ctx, dims.n_mels)).astype(mx.float16)
    enc = median_time(lambda: mx.eval(model.embed_audio(mel)), reps=10)
    runs = [mlx_greedy_fixed(model, mel, prompt, n_tokens) for _ in range(2)][1:]
    step = statistics.median(s for _, s, _ in runs)
    t_enc = t_step = t_total = None
    if with_torch:
        import torch

        tmodel = random_torch_model(dims)
        tmel = torch.randn(1, dims.n_mels, 2 * dims.n_audio_ctx, device="cuda", dtype=torch.float16)

        def enc_torch():
            with torch.no_grad():
                tmodel.encoder(tmel)
            torch.cuda.synchronize()

        t_enc = median_time(enc_torch, reps=10)
        truns = [torch_greedy_fixed(tmodel, tmel, prompt, n_tokens) for _ in range(reps + 1)][1:]
        t_total = statistics.median(e + s * n_tokens for e, s, _ in truns)
        t_step = statistics.median(s for _, s, _ in truns)
        del tmodel
        torch.cuda.empty_cache()
    r_enc, r_step = mlx_runtime_greedy_fixed(model, mel, prompt, n_tokens, reps=reps)
    report.add(Row(name, "encoder, one 30 s window", r_enc, t_enc, note=f"model.embed_audio {enc:.2f} ms"))
    report.add(Row(name, "decoder step, batch 1", r_step, t_step, note=f"MLX-graph backend step {step:.2f} ms"))
    total = r_enc + r_step * n_tokens
    report.add(Row(name, f"encoder + {n_tokens} greedy steps", total, t_total, note="random weights, no early stop"))
    if bandwidth:
        nbytes = decoder_bytes_per_token(model)
        bound = nbytes / (bandwidth * 1e9) * 1e3
        note = f"{nbytes / 1e9:.3f} GB read per token at {bandwidth:.0f} GB/s = {bound:.3f} ms"
        report.add(Row(name, "decoder step / bandwidth bound", r_step / bound, None, unit="x", note=note))
    del model
    mx.clear_cache()


# ---- end to end on real weights ----------------------------------------------------------------


def bench_transcribe(report: Report, name: str, model_dir: Path, pt_path: Path, audio: list[np.ndarray],
                     word_timestamps: bool = False, with_torch: bool = True, beam_size: int | None = None) -> dict:
    """Transcribe every clip with both runtimes (fp16, temperature 0, greedy or beam search); total
    wall time, after one untimed warm-up pass. Returns both transcripts for comparison."""
    import whisper_mlx

    opts = dict(temperature=0.0, word_timestamps=word_timestamps, condition_on_previous_text=True)
    if beam_size:
        opts["beam_size"] = beam_size
    model = whisper_mlx.load_model(model_dir)

    def run_mlx():
        return [whisper_mlx.transcribe(a, model=model, **opts)["text"] for a in audio]

    run_mlx()
    t0 = time.perf_counter()
    ours = run_mlx()
    ms = (time.perf_counter() - t0) * 1e3
    theirs, t_ms = None, None
    if with_torch:
        import torch
        import whisper

        tmodel = whisper.load_model(str(pt_path), device="cuda")
        heads = getattr(model, "alignment_heads", None)
        if heads:
            mask = torch.zeros(tmodel.dims.n_text_layer, tmodel.dims.n_text_head, dtype=torch.bool)
            for layer, head in heads:
                mask[layer, head] = True
            tmodel.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)

        def run_torch():
            out = [tmodel.transcribe(a, fp16=True, **opts)["text"] for a in audio]
            torch.cuda.synchronize()
            return out

        run_torch()
        t0 = time.perf_counter()
        theirs = run_torch()
        t_ms = (time.perf_counter() - t0) * 1e3
        del tmodel
        torch.cuda.empty_cache()
    seconds = sum(len(a) for a in audio) / 16000
    same = sum(a == b for a, b in zip(ours, theirs)) if theirs else None
    what = f"transcribe {len(audio)} clips, {seconds:.0f} s audio" + (", words" if word_timestamps else "")
    what += f", beam {beam_size}" if beam_size else ""
    note = f"same text {same}/{len(audio)}" if theirs else ""
    report.add(Row(name, what, ms, t_ms, note=note))
    del model
    mx.clear_cache()
    return {"mlx": ours, "torch": theirs}


def load_wav(path: Path) -> np.ndarray:
    """A 16 kHz mono 16-bit WAV as float32 (the stdlib reader keeps decoding out of the timings)."""
    import wave

    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, np.int16).astype(np.float32) / 32768.0
