"""Side-by-side GPU benchmark: whisper_mlx on MLX's CUDA backend against openai-whisper on PyTorch
CUDA, both fp16, in one process on one GPU (issue 7). Also runs on the CPU, whisper_mlx alone, to
check itself (`python -m tools.bench_gpu --device cpu --shapes tiny --tokens 5 --no-torch`); the
random-weight models there are fp32, the CPU's fast dtype (fp16 on the CPU takes several times
longer and measures nothing the GPU run needs).

Every MLX timing goes through the runtime's own code (the model's decoding backend, the MLX-graph
backend for comparison, `transcribe`); PyTorch runs openai-whisper's model and its kv-cache hooks
the way its decoder loop does.

What it records is `benchmarks.core.Row`s, timed with the core's timer (`core.timed`, repeats
through `core.interleave`), the median of the repeats as this benchmark has always reported:
- family: the model family (random weights at its manifest's dims, or real weights); case: the
  measurement ("encoder, one 30 s window", "decoder step, batch 1", ...); entry:
  "whisper_mlx:fp16" (whisper_mlx on the backend its rule picks; the variant is the weights' dtype),
  "whisper_mlx@mlx:fp16" (the MLX-graph backend, model.py as it is), `TORCH` (openai-whisper) or
  `BOUND` (the decoder step's bandwidth bound).
- A row computed from measured medians rather than timed itself (the runtime's step cost, encoder +
  N steps, the bound) keeps `times` empty.
The side-by-side table (and the JSON's "rows") pairs each whisper_mlx row with openai-whisper's on
the same family and case, in milliseconds, speedup = PyTorch's time / whisper_mlx's.

The shapes are the manifests' (manifests/*.yaml: every family's dims), the one table of shapes the
random-weight benchmarks here run (this one and `batched_throughput`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from whisper_mlx import runtime  # before mlx.core

import mlx.core as mx
import numpy as np

from benchmarks import core
from whisper_mlx.backends import backend_for
from whisper_mlx.backends.mlx import MlxBackend
from whisper_mlx.logit_rules import LogitRules
from whisper_mlx.model import ModelDimensions, Whisper

MLX = "whisper_mlx"  # the system part of whisper_mlx's entries ("whisper_mlx:fp16")
TORCH = "openai-whisper:fp16"
BOUND = "bandwidth bound"
VARIANTS = {mx.float16: "fp16", mx.float32: "fp32", mx.bfloat16: "bf16"}

ENCODER = "encoder, one 30 s window"
STEP = "decoder step, batch 1"

# the side-by-side line's fields, in the committed JSON's order (benchmarks/gpu-*.json "rows")
LINE_KEYS = ("model", "what", "mlx", "torch", "unit", "note", "speedup")


# ---- the one table of shapes -------------------------------------------------------------------


def shape_names() -> list[str]:
    """Every model family a random-weight benchmark can build: those with a manifest."""
    from zoo.manifest import load_manifests

    return [f.family for f in load_manifests()]


def shape(name: str) -> ModelDimensions:
    """A family's model dimensions, from its manifest (no weights needed)."""
    from zoo.manifest import find_family

    return ModelDimensions(**find_family(name).dims.model_dump())


def prompt_tokens(dims: ModelDimensions) -> list[int]:
    """The decoding prompt the random-weight runs start from: start of transcript, language, task,
    no timestamps (4 tokens; 3 for an English-only vocabulary)."""
    return [50258, 50259, 50360, 50364][: 4 if dims.n_vocab >= 51865 else 3]


# ---- rows and the report -----------------------------------------------------------------------


def mlx_entry(dtype, backend: str = "") -> str:
    """whisper_mlx's entry for weights of `dtype`: "whisper_mlx:fp16", "whisper_mlx@mlx:fp16" with
    a named backend."""
    return f"{MLX}{'@' + backend if backend else ''}:{VARIANTS.get(dtype, str(dtype))}"


def system(entry: str) -> str:
    """The system part of an entry ("whisper_mlx@mlx" of "whisper_mlx@mlx:fp16")."""
    return entry.partition(":")[0]


def measure(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of each of `repeats` calls of fn after `warmup` untimed ones, through the core's
    timer; fn must block until its device work is done."""
    return core.interleave({"fn": lambda: core.timed(fn)}, repeats, warmup)["fn"]


def derived(family: str, case: str, entry: str, seconds: float, **fields) -> core.Row:
    """A row computed from measured medians (no repeats of its own: `times` stays empty)."""
    return core.Row(family=family, case=case, entry=entry, seconds=seconds, median_s=seconds, stat="median",
                    **fields)


def lines(rows: list[core.Row], among: list[core.Row] | tuple[core.Row, ...] | None = None) -> list[dict]:
    """The side-by-side lines of `among` (default: every row), paired within `rows`: one per
    whisper_mlx row on the backend its rule picks (milliseconds, openai-whisper's row on the same
    family and case beside it) and one per bandwidth bound (that row's step over it, unit "x")."""
    out = []
    for row in rows if among is None else among:
        if system(row.entry) == MLX:
            theirs = core.find_row(rows, row.family, row.case, TORCH)
            speedup = core.ratio(rows, row.family, row.case, TORCH, row.entry)
            values = (row.family, row.case, row.seconds * 1e3, theirs.seconds * 1e3 if theirs else None, "ms",
                      row.note, speedup or None)
        elif row.entry == BOUND:
            ours = next((r for r in rows if (r.family, r.case) == (row.family, row.case) and system(r.entry) == MLX),
                        None)
            value = core.ratio(rows, row.family, row.case, ours.entry, BOUND) if ours else None
            values = (row.family, "decoder step / bandwidth bound", value, None, "x", row.note, None)
        else:
            continue
        out.append(dict(zip(LINE_KEYS, values)))
    return out


@dataclass
class Report:
    device: str
    rows: list[core.Row] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def add(self, *rows: core.Row) -> None:
        """Record rows and print the side-by-side lines they make."""
        self.rows.extend(rows)
        for line in lines(self.rows, rows):
            print(format_line(line), flush=True)

    def as_dict(self) -> dict:
        """The committed JSON's run: device, facts, the side-by-side lines ("rows"), and every row
        measured with its repeats ("measurements")."""
        return {"device": self.device, "facts": self.facts, "rows": lines(self.rows),
                "measurements": [asdict(r) for r in self.rows]}


def format_line(r: dict) -> str:
    t = f"{r['torch']:10.2f}" if r["torch"] is not None else f"{'-':>10}"
    s = f"{r['speedup']:6.2f}x" if r["speedup"] else f"{'-':>7}"
    return f"| {r['model']:<16} | {r['what']:<34} | {r['mlx']:10.2f} | {t} | {s} | {r['unit']:<5} | {r['note']} |"


def table(report: Report) -> str:
    """The result as a Markdown table (speedup: PyTorch time / whisper_mlx time)."""
    head = "| model | measurement | whisper_mlx | openai-whisper (PyTorch) | speedup | unit | note |\n"
    head += "| --- | --- | ---: | ---: | ---: | --- | --- |\n"
    return head + "\n".join(format_line(r) for r in lines(report.rows)) + "\n"


# ---- ceilings --------------------------------------------------------------------------------


def mlx_copy_bandwidth(n_bytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus bytes written."""
    src = mx.random.uniform(shape=(n_bytes // 2,)).astype(mx.float16)
    mx.eval(src)
    seconds = core.time_call(lambda: mx.eval(src + 1), reps)  # one read, one write
    return 2 * n_bytes / seconds / 1e9


def torch_copy_bandwidth(n_bytes: int = 1 << 30, reps: int = 10) -> float:
    import torch

    src = torch.rand(n_bytes // 2, device="cuda", dtype=torch.float16)
    dst = torch.empty_like(src)

    def run():
        dst.copy_(src)
        torch.cuda.synchronize()

    return 2 * n_bytes / core.time_call(run, reps) / 1e9


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


def mlx_greedy_fixed(model: Whisper, mel: mx.array, prompt: list[int], n_tokens: int) -> tuple[float, list[float], list[int]]:
    """Encoder + `n_tokens` greedy steps with no early stop, through the MLX-graph backend (model.py
    as it is; a host round trip per token): returns (encoder seconds, seconds of each single-token
    step after the first, tokens)."""
    backend = MlxBackend(model)
    out: dict = {}

    def encode():
        out["features"] = backend.encode(mel)
        mx.eval(out["features"])

    encoder_s = core.timed(encode)
    session = backend.session(out["features"], 1)
    out["tokens"] = np.array([prompt])
    session.prefill(out["tokens"], 0)

    def step():
        picked = mx.argmax(session.pending, axis=-1)
        nxt = np.array(picked).astype(np.int64)
        out["tokens"] = np.concatenate([out["tokens"], nxt[:, None]], axis=1)
        session.feed(nxt)

    steps = [core.timed(step) for _ in range(n_tokens)]
    return encoder_s, steps[1:], out["tokens"][0, len(prompt):].tolist()


def mlx_runtime_greedy_fixed(model: Whisper, mel: mx.array, prompt: list[int], n_tokens: int,
                             reps: int = 3) -> tuple[list[float], float]:
    """The model's decoding backend (on a CUDA GPU the CUDA backend: compiled encoder, the greedy
    loop with the filters on the device, next step queued before the host reads a token, the step
    as one CUDA kernel), with no early stop: returns (the encoder's repeats in seconds, seconds per
    step), the step cost as (time for n_tokens - time for 1) / (n_tokens - 1), medians of `reps`."""
    backend = backend_for(model)
    encoder = measure(lambda: mx.eval(backend.encode(mel)), repeats=10)
    features = backend.encode(mel)
    mx.eval(features)
    rules = LogitRules(n_vocab=model.dims.n_vocab, eot=-1, sample_begin=len(prompt))  # no filters, no end
    tokens = np.array([prompt])

    def run(n: int):
        session = backend.session(features, 1)
        session.prefill(tokens, 0)
        session.greedy(rules, tokens, n, model.dims.n_text_ctx)

    one = core.time_call(lambda: run(1), reps)
    many = core.time_call(lambda: run(n_tokens), reps, warmup=1)
    return encoder, (many - one) / (n_tokens - 1)


def torch_greedy_fixed(model, mel, prompt: list[int], n_tokens: int) -> tuple[float, float, list[int]]:
    """The same for openai-whisper: its kv-cache hooks and decoder call, as its decoding loop.
    Returns (encoder seconds, median seconds of the single-token steps after the first, tokens)."""
    import torch

    out: dict = {}
    with torch.no_grad():
        torch.cuda.synchronize()

        def encode():
            out["features"] = model.encoder(mel)
            torch.cuda.synchronize()

        encoder_s = core.timed(encode)
        cache, hooks = model.install_kv_cache_hooks()
        out["tokens"] = torch.tensor([prompt], device="cuda")

        def step(i: int):
            tokens = out["tokens"]
            feed = tokens if i == 0 else tokens[:, -1:]
            logits = model.decoder(feed, out["features"], kv_cache=cache)[:, -1].float()
            nxt = logits.argmax(-1).cpu()  # the host needs each token, as in openai-whisper's loop
            out["tokens"] = torch.cat([tokens, nxt[:, None].to("cuda")], dim=1)

        try:
            steps = [core.timed(lambda: step(i)) for i in range(n_tokens)]
        finally:
            for h in hooks:
                h.remove()
    return encoder_s, statistics.median(steps[1:]), out["tokens"][0, len(prompt):].tolist()


def bench_shape(report: Report, name: str, dims: ModelDimensions, n_tokens: int = 100, reps: int = 3,
                with_torch: bool = True, bandwidth: float | None = None) -> None:
    """Encoder pass, decoder step and encoder + n_tokens steps, random fp16 weights (fp32 on the
    CPU), batch 1."""
    prompt = prompt_tokens(dims)
    dtype = mx.float32 if runtime.on_cpu() else mx.float16
    model = random_mlx_model(dims, dtype=dtype)
    mel = mx.random.normal((1, 2 * dims.n_audio_ctx, dims.n_mels)).astype(dtype)
    graph = mlx_entry(dtype, "mlx")
    graph_enc = core.make_row(name, ENCODER, graph, measure(lambda: mx.eval(model.embed_audio(mel)), 10),
                              "median", backend="mlx", note="model.embed_audio")
    runs = [mlx_greedy_fixed(model, mel, prompt, n_tokens) for _ in range(2)][1:]  # after one warm-up run
    graph_step = core.make_row(name, STEP, graph, runs[0][1], "median", backend="mlx",
                               note="median over the steps after the first of one run")
    report.add(graph_enc, graph_step)
    if with_torch:
        import torch

        tmodel = random_torch_model(dims)
        tmel = torch.randn(1, dims.n_mels, 2 * dims.n_audio_ctx, device="cuda", dtype=torch.float16)

        def enc_torch():
            with torch.no_grad():
                tmodel.encoder(tmel)
            torch.cuda.synchronize()

        t_enc = measure(enc_torch, 10)
        truns = [torch_greedy_fixed(tmodel, tmel, prompt, n_tokens) for _ in range(reps + 1)][1:]  # after a warm-up
        report.add(core.make_row(name, ENCODER, TORCH, t_enc, "median", backend="pytorch"),
                   core.make_row(name, STEP, TORCH, [s for _, s, _ in truns], "median", backend="pytorch",
                                 note="median over runs of each run's median step"),
                   core.make_row(name, f"encoder + {n_tokens} greedy steps", TORCH,
                                 [e + s * n_tokens for e, s, _ in truns], "median", backend="pytorch"))
        del tmodel
        torch.cuda.empty_cache()
    encoder, r_step = mlx_runtime_greedy_fixed(model, mel, prompt, n_tokens, reps=reps)
    backend, ours = backend_for(model).name, mlx_entry(dtype)
    r_enc = core.make_row(name, ENCODER, ours, encoder, "median", backend=backend,
                          note=f"model.embed_audio {graph_enc.seconds * 1e3:.2f} ms")
    report.add(r_enc, derived(name, STEP, ours, r_step, backend=backend,
                              note=f"MLX-graph backend step {graph_step.seconds * 1e3:.2f} ms"))
    report.add(derived(name, f"encoder + {n_tokens} greedy steps", ours, r_enc.seconds + r_step * n_tokens,
                       backend=backend, note="random weights, no early stop"))
    if bandwidth:
        nbytes = decoder_bytes_per_token(model)
        bound = nbytes / (bandwidth * 1e9)
        note = f"{nbytes / 1e9:.3f} GB read per token at {bandwidth:.0f} GB/s = {bound * 1e3:.3f} ms"
        report.add(derived(name, STEP, BOUND, bound, note=note))
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
    out: dict = {"mlx": None, "torch": None}

    def run_mlx():
        out["mlx"] = [whisper_mlx.transcribe(a, model=model, **opts)["text"] for a in audio]

    ours = measure(run_mlx, 1, warmup=1)
    theirs = None
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
            out["torch"] = [tmodel.transcribe(a, fp16=True, **opts)["text"] for a in audio]
            torch.cuda.synchronize()

        theirs = measure(run_torch, 1, warmup=1)
        del tmodel
        torch.cuda.empty_cache()
    seconds = sum(len(a) for a in audio) / 16000
    what = f"transcribe {len(audio)} clips, {seconds:.0f} s audio" + (", words" if word_timestamps else "")
    what += f", beam {beam_size}" if beam_size else ""
    note = ""
    if out["torch"]:
        note = f"same text {sum(a == b for a, b in zip(out['mlx'], out['torch']))}/{len(audio)}"
    entry = mlx_entry(model.encoder.conv1.weight.dtype)
    rows = [core.make_row(name, what, entry, ours, "median", audio_s=seconds, backend=backend_for(model).name,
                          note=note)]
    if theirs is not None:
        rows.insert(0, core.make_row(name, what, TORCH, theirs, "median", audio_s=seconds, backend="pytorch"))
    report.add(*rows)
    del model
    mx.clear_cache()
    return out


def load_wav(path: Path) -> np.ndarray:
    """A 16 kHz mono 16-bit WAV as float32 (the stdlib reader keeps decoding out of the timings)."""
    import wave

    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, np.int16).astype(np.float32) / 32768.0
