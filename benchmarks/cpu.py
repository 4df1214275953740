"""CPU benchmark: whisper_mlx beside the installed peers (faster-whisper, openai-whisper,
mlx-whisper) on the same weights, the same audio and the same decoding setup.

Every repeat of every measurement is one child process (`python -m benchmarks.cpu SPEC RESULT`)
that imports one system, loads one model and transcribes one clip once, so import, load and
transcription time and peak memory (VmHWM) are that system's alone, as a user running it sees
them. Measurements take turns within each round (core.interleave); a row reports the fastest
repeat (and the median), the load time as its own number, the peak memory and the worst WER.

Stdlib only at import (with benchmarks.core): the child imports this module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.core import (
    DEFAULT_CACHE,
    ROOT,
    BenchError,
    Row,
    busy_warning,
    find_row,
    interleave,
    machine,
    make_row,
    metric_value,
    peak_mb,
    write_atomic,
)

# system -> the module whose presence means "installed"
SYSTEMS = {
    "whisper_mlx": "whisper_mlx",
    "faster-whisper": "faster_whisper",
    "openai-whisper": "whisper",
    "mlx-whisper": "mlx_whisper",
}
PEER_DISTS = ("faster-whisper", "ctranslate2", "openai-whisper", "torch", "mlx-whisper")
VARIANTS = {"fp32": ("float32", None), "8bit": ("float16", 8), "4bit": ("float16", 4)}
BACKENDS = ("mlx", "cpu", "cuda")  # whisper_mlx.backends.NAMES, without importing MLX here
# clip id -> (zoo/clips.yaml id, seconds kept: None = the whole clip)
CLIPS = {"clip30": ("en_long_story", 30.0), "bench_long": ("bench_long", None)}


@dataclass(frozen=True)
class Setup:
    """A decoding setup, the same for every system that has it."""

    name: str
    about: str
    beam_size: int = 1
    word_timestamps: bool = False
    batch_size: int | None = None  # batched long-form (issue 14); None: window after window


SETUPS = {s.name: s for s in (
    Setup("greedy", "greedy (temperature 0, no fallback), condition_on_previous_text, segment timestamps"),
    Setup("beam5", "beam search with 5 beams (patience 1, length penalty 1), temperature 0, "
                   "condition_on_previous_text", beam_size=5),
    Setup("words", "greedy with word timestamps (cross-attention alignment)", word_timestamps=True),
    # whisper_mlx `transcribe(..., batch_size=8)` (issue 14: chunks follow the speech where
    # onnxruntime is installed) against faster-whisper's BatchedInferencePipeline at batch 8 (its
    # VAD); neither conditions a chunk on the previous text
    Setup("batch8", "batched long-form, greedy, batch 8 (whisper_mlx: transcribe(batch_size=8); "
                    "faster-whisper: BatchedInferencePipeline; both cut chunks at speech with Silero VAD)",
          batch_size=8),
)}

# the issues' targets: (clips (None: every clip), setups, numerator, denominator, max ratio, metric,
# source). A "whisper_mlx:VARIANT" numerator matches whisper_mlx on every backend measured; a
# whisper_mlx denominator is then the same backend's.
TARGETS = (
    (("clip30",), ("greedy", "beam5"), "whisper_mlx:fp32", "faster-whisper:fp32", 1.0, "time", "issue 13"),
    (("bench_long",), ("greedy",), "whisper_mlx:fp32", "faster-whisper:fp32", 0.75, "time", "issue 13"),
    (("bench_long",), ("beam5",), "whisper_mlx:fp32", "faster-whisper:fp32", 1.0, "time", "issue 13"),
    (None, ("batch8",), "whisper_mlx:fp32", "faster-whisper:fp32", 0.7, "time", "issue 14"),
    (None, tuple(SETUPS), "whisper_mlx:8bit", "whisper_mlx:fp32", 1.2, "time", "quantized variants"),
    (None, tuple(SETUPS), "whisper_mlx:4bit", "whisper_mlx:fp32", 1.2, "time", "quantized variants"),
    (None, tuple(SETUPS), "whisper_mlx:fp32", "faster-whisper:fp32", 1.0, "peak_mb", "memory"),
)


# ---- what is measured ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """Who is measured: a system on a model variant (peers run fp32 only); whisper_mlx on a
    named decoding backend, or on the one its rule picks (backend None)."""

    system: str
    variant: str = "fp32"
    backend: str | None = None

    @property
    def key(self) -> str:
        """"system[@backend]:variant", e.g. "whisper_mlx:fp32", "whisper_mlx@mlx:4bit"."""
        return f"{self.system}{'@' + self.backend if self.backend else ''}:{self.variant}"

    @classmethod
    def parse(cls, key: str) -> "Entry":
        """"whisper_mlx@cpu:4bit" -> Entry; raises ValueError naming the bad part."""
        who, _, variant = key.partition(":")
        system, at, backend = who.partition("@")
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r} in {key!r} (known: {', '.join(SYSTEMS)})")
        if at and system != "whisper_mlx":
            raise ValueError(f"{key!r}: only whisper_mlx has decoding backends")
        if at and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} in {key!r} (known: {', '.join(BACKENDS)})")
        variant = variant or "fp32"
        allowed = VARIANTS if system == "whisper_mlx" else ("fp32",)
        if variant not in allowed:
            raise ValueError(f"{system} has no variant {variant!r} (known: {', '.join(allowed)})")
        return cls(system, variant, backend or None)


@dataclass(frozen=True)
class Measure:
    """One thing the benchmark measures, once per round: an entry on a family, clip and setup."""

    family: str
    clip: str
    setup: str
    entry: Entry

    @property
    def case(self) -> str:
        return case_name(self.clip, self.setup)

    @property
    def label(self) -> str:
        return f"{self.family} {self.case} {self.entry.key}"


def case_name(clip: str, setup: str) -> str:
    """A Row's case for the CPU benchmark: "clip30 greedy"."""
    return f"{clip} {setup}"


def split_case(case: str) -> tuple[str, str]:
    clip, _, setup = case.partition(" ")
    return clip, setup


@dataclass(frozen=True)
class BenchClip:
    """Audio with its known words; `trimmed` clips are scored against the best-matching prefix."""

    id: str
    path: Path
    text: str
    seconds: float
    trimmed: bool


def installed_systems() -> list[str]:
    """The systems whose Python package is importable here."""
    return [name for name, module in SYSTEMS.items() if importlib.util.find_spec(module) is not None]


def unsupported(system: str, setup: str) -> str | None:
    """Why `system` cannot run `setup`, or None when it can."""
    s = SETUPS[setup]
    if s.beam_size > 1 and system == "mlx-whisper":
        return "mlx-whisper has no beam search"
    if s.batch_size and system in ("openai-whisper", "mlx-whisper"):
        return f"{system} has no batched mode"
    return None


def default_entries(systems: list[str], variants: list[str], backends: list[str] | None = None) -> list[Entry]:
    """whisper_mlx in each requested variant (on each named backend, or the default one), then
    every other system at fp32."""
    out = []
    if "whisper_mlx" in systems:
        out = [Entry("whisper_mlx", v, b) for b in (backends or [None]) for v in variants]
    return out + [Entry(s) for s in systems if s != "whisper_mlx"]


def plan(families: list[str], clips: list[str], setups: list[str], entries: list[Entry]) -> tuple[list[Measure], list[str]]:
    """Every entry on every family, clip and setup it can run; and a line for each it cannot."""
    measures, skipped = [], []
    for family in families:
        for clip in clips:
            for setup in setups:
                for entry in entries:
                    why = unsupported(entry.system, setup)
                    if why is None:
                        measures.append(Measure(family, clip, setup, entry))
                    elif f"{setup}: {why}" not in skipped:
                        skipped.append(f"{setup}: {why}")
    return measures, skipped


# ---- inputs: audio and models ----------------------------------------------------------------


def prepare_clip(clip_id: str, cache: Path = DEFAULT_CACHE) -> BenchClip:
    """Synthesize (cached) the clip; `clip30` is en_long_story cut to its first 30 s with sox."""
    from zoo.speech import make_clips

    if clip_id not in CLIPS:
        raise BenchError(f"unknown clip {clip_id!r} (known: {', '.join(CLIPS)})")
    source_id, keep = CLIPS[clip_id]
    clip = make_clips(cache / "clips", [source_id])[source_id]
    path = clip.path
    if keep is not None:
        path = clip.path.with_name(f"{clip_id}-{clip.path.stem}.wav")
        if not path.exists():
            _atomic_run(["sox", str(clip.path), "{out}", "trim", "0", f"{keep:g}"], path)
    return BenchClip(clip_id, path, clip.text, _wav_seconds(path), trimmed=keep is not None)


def _wav_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def _atomic_run(cmd: list[str], out: Path) -> None:
    """Run a command writing to "{out}" (a temp file), then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    try:
        proc = subprocess.run([c.replace("{out}", tmp) for c in cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"{out}: {cmd[0]} failed: {proc.stderr.strip()[-300:]}")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _checkpoint(family_name: str):
    """The family's OpenAI state dict from its offline source (with the manifest's heads)."""
    from zoo.manifest import find_family
    from zoo.sources import load_first_available

    return load_first_available(find_family(family_name), offline_only=True)


def whisper_mlx_dir(family: str, variant: str, cache: Path = DEFAULT_CACHE) -> Path:
    """A converted whisper_mlx model directory (fp32, or 4/8-bit from float16) with the recipe the
    family's manifest publishes (e.g. a mixed-precision embedding), built once per recipe."""
    from zoo.convert import convert, quantization_config
    from zoo.manifest import variants

    dtype, q_bits = VARIANTS[variant]
    group_size, overrides = 64, {}
    for v in variants():
        if v.name == f"{family}-{variant}":
            dtype, q_bits, group_size, overrides = v.dtype, v.q_bits, v.q_group_size, v.q_overrides
    out = cache / "models" / f"{family}-{variant}"
    want = quantization_config(q_bits, group_size, overrides)
    config = out / "config.json"
    if not config.is_file() or json.loads(config.read_text()).get("quantization") != want:
        convert(_checkpoint(family), out, dtype=dtype, q_bits=q_bits, q_group_size=group_size, name=out.name,
                q_overrides=overrides)
    return out


def ctranslate2_dir(family: str, cache: Path = DEFAULT_CACHE) -> Path:
    """A CTranslate2 model directory for faster-whisper: the package's own, or one assembled
    (config, tokenizer, vocabulary + model.bin = the concatenated parts) under the cache."""
    from zoo.manifest import find_family
    from zoo.sources import ctranslate2

    sources = [s for s in find_family(family).sources if s.kind == "ctranslate2"]
    if not sources:
        raise BenchError(f"{family}: its manifest has no ctranslate2 source (faster-whisper needs one)")
    parts, config = ctranslate2.locate(sources[0].location)
    if len(parts) == 1 and parts[0].name == "model.bin":
        return parts[0].parent
    out = cache / "models" / f"{family}-ct2"
    if (out / "model.bin").is_file():
        return out
    if config is None:
        raise BenchError(f"{family}: ctranslate2 source {sources[0].location} has no config.json")
    from zoo.convert import atomic_dir

    with atomic_dir(out) as tmp:
        for name in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json"):
            if (config.parent / name).is_file():
                shutil.copy(config.parent / name, tmp / name)
        with open(tmp / "model.bin", "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 16 << 20)
    return out


def openai_pt(family: str, cache: Path = DEFAULT_CACHE) -> Path:
    """openai-whisper's .pt of the same checkpoint."""
    from zoo.sources import write_openai_checkpoint

    out = cache / "models" / f"{family}.pt"
    if not out.is_file():
        write_openai_checkpoint(_checkpoint(family), out)
    return out


def mlx_whisper_dir(family: str, cache: Path = DEFAULT_CACHE) -> Path:
    """mlx-whisper's layout of our fp32 directory: `mlp1`/`mlp2` names, no encoder sinusoids
    (it computes them), and a config.json holding only the dims it accepts."""
    out = cache / "models" / f"{family}-mlx-whisper"
    if (out / "weights.safetensors").is_file():
        return out
    from whisper_mlx import runtime  # noqa: F401  (before mlx.core)

    import mlx.core as mx

    from zoo.convert import atomic_dir
    from zoo.sources import DIM_FIELDS

    src = whisper_mlx_dir(family, "fp32", cache)
    config = json.loads((src / "config.json").read_text())
    weights = {}
    for name, value in mx.load(str(src / "weights.safetensors")).items():
        if name == "encoder.positional_embedding":
            continue
        weights[name.replace(".mlp.0.", ".mlp1.").replace(".mlp.2.", ".mlp2.")] = value
    with atomic_dir(out) as tmp:
        mx.save_safetensors(str(tmp / "weights.safetensors"), weights)
        dims = {k: config[k] for k in DIM_FIELDS}
        (tmp / "config.json").write_text(json.dumps({"model_type": "whisper", **dims}, indent=2) + "\n")
    return out


def model_path(entry: Entry, family: str, cache: Path = DEFAULT_CACHE) -> Path:
    """Where `entry`'s system reads `family`'s weights from (prepared on first use)."""
    if entry.system == "whisper_mlx":
        return whisper_mlx_dir(family, entry.variant, cache)
    if entry.system == "faster-whisper":
        return ctranslate2_dir(family, cache)
    if entry.system == "openai-whisper":
        return openai_pt(family, cache)
    return mlx_whisper_dir(family, cache)


# ---- one measurement, in a child process -----------------------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    """The same thread limits for every system (BLAS, OpenMP, MKL)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_once(m: Measure, model: Path, clip: BenchClip, threads: int, timeout_s: float = 1800) -> dict:
    """Measure `m` transcribing `clip` in a fresh interpreter; returns the child's result."""
    spec = {"system": m.entry.system, "backend": m.entry.backend, "model": str(model), "audio": str(clip.path),
            "threads": threads, "setup": m.setup}
    with tempfile.TemporaryDirectory(prefix="whisper-mlx-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.cpu", json.dumps(spec), str(result)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=thread_env(threads), capture_output=True,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{m.label} on {clip.path}: no result within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise BenchError(f"{m.label} on {clip.path}: child failed: {tail[0]}")
        return json.loads(result.read_text())


def _child(spec: dict) -> dict:
    """Import one system, load its model, transcribe once with the setup's options; time each
    step separately. n_words: the word timestamps returned (0 when the setup asks for none)."""
    system, model, audio, threads = spec["system"], spec["model"], spec["audio"], spec["threads"]
    setup = SETUPS[spec["setup"]]
    words, beam, batch = setup.word_timestamps, setup.beam_size, setup.batch_size
    t0 = time.perf_counter()
    if system == "whisper_mlx":
        import whisper_mlx
        from whisper_mlx import backends

        t1 = time.perf_counter()
        m = whisper_mlx.load_model(model, backend=spec.get("backend"))
        t2 = time.perf_counter()
        engine = backends.backend_for(m).name
        kw: dict = {"temperature": 0.0, "word_timestamps": words}
        if beam > 1:
            kw["beam_size"] = beam
        if batch:
            kw["batch_size"] = batch
        else:
            kw["condition_on_previous_text"] = True
        out = whisper_mlx.transcribe(audio, model=m, **kw)
        text, n_words = out["text"], sum(len(seg.get("words") or []) for seg in out["segments"])
    elif system == "faster-whisper":
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        t1 = time.perf_counter()
        m = WhisperModel(model, device="cpu", compute_type="float32", cpu_threads=threads)
        pipe = BatchedInferencePipeline(model=m) if batch else None
        t2 = time.perf_counter()
        engine = "ctranslate2"
        if pipe is not None:
            segments, _ = pipe.transcribe(audio, batch_size=batch, beam_size=beam, temperature=0.0,
                                          word_timestamps=words)
        else:
            segments, _ = m.transcribe(audio, beam_size=beam, temperature=0.0, condition_on_previous_text=True,
                                       without_timestamps=False, word_timestamps=words)
        segments = list(segments)  # lazy: decoding happens here
        text, n_words = "".join(s.text for s in segments), sum(len(s.words or []) for s in segments)
    elif system == "openai-whisper":
        import torch
        import whisper

        torch.set_num_threads(threads)
        t1 = time.perf_counter()
        m = whisper.load_model(model, device="cpu")
        t2 = time.perf_counter()
        engine = "torch"
        kw = {"beam_size": beam} if beam > 1 else {}
        out = m.transcribe(audio, fp16=False, temperature=0.0, condition_on_previous_text=True,
                           word_timestamps=words, **kw)
        text, n_words = out["text"], sum(len(seg.get("words") or []) for seg in out["segments"])
    elif system == "mlx-whisper":
        from whisper_mlx import runtime  # noqa: F401  (the same OpenBLAS as whisper_mlx)

        import mlx.core as mx
        import mlx_whisper
        from mlx_whisper.transcribe import ModelHolder

        t1 = time.perf_counter()
        ModelHolder.get_model(model, mx.float32)  # transcribe() reuses this load
        t2 = time.perf_counter()
        engine = "mlx"
        out = mlx_whisper.transcribe(audio, path_or_hf_repo=model, temperature=0.0, fp16=False,
                                     condition_on_previous_text=True, word_timestamps=words)
        text, n_words = out["text"], sum(len(seg.get("words") or []) for seg in out["segments"])
    else:
        raise BenchError(f"unknown system {system!r}")
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "load_s": t2 - t1, "transcribe_s": t3 - t2, "peak_mb": peak_mb(),
            "text": text.strip(), "n_words": n_words, "backend": engine}


# ---- scoring and aggregation -----------------------------------------------------------------


def normalized_words(text: str) -> list[str]:
    from zoo.gates import normalize

    return normalize(text)


def clip_wer(clip: BenchClip, hypothesis: str) -> float:
    """WER (percent) against the clip's text; for a trimmed clip, against the non-empty prefix of
    its text closest to the hypothesis (ties: the shorter), since words after the cut were never
    spoken."""
    ref, hyp = normalized_words(clip.text), normalized_words(hypothesis)
    prev = list(range(len(hyp) + 1))  # prev[j]: edits between ref[:i] and hyp[:j]
    best: tuple[int, int] | None = None  # (edits, prefix length) of the closest prefix
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
        if clip.trimmed and (best is None or cur[-1] < best[0]):
            best = (cur[-1], i)
    errors, n = best if best is not None else (prev[-1], len(ref))
    return 100.0 * errors / max(n, 1)


def aggregate(runs: list[dict], audio_s: dict[str, float]) -> list[Row]:
    """One Row per (family, case, entry), in first-seen order: the fastest transcription and its
    median, the fastest load and import, the lowest peak memory (interference only adds to each),
    the worst WER."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["family"], run["case"], run["entry"]), []).append(run)
    rows = []
    for (family, case, entry), group in groups.items():
        rows.append(make_row(
            family, case, entry, [r["transcribe_s"] for r in group], stat="min",
            load_s=min(r["load_s"] for r in group),
            import_s=min(r["import_s"] for r in group),
            peak_mb=min(r["peak_mb"] for r in group),
            wer=max(r["wer"] for r in group),
            audio_s=audio_s[split_case(case)[0]],
            backend=group[0]["backend"],
            text=group[0]["text"],
        ))
    return rows


def round_ratios(runs: list[dict], family: str, case: str, num: str, den: str, metric: str = "time") -> list[float]:
    """num's metric over den's in each round (measured next to each other): their spread shows the
    noise a same-run ratio carries."""
    field = {"time": "transcribe_s", "load": "load_s", "peak_mb": "peak_mb"}[metric]
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if (r["family"], r["case"]) == (family, case) and r["entry"] in (num, den):
            by_round.setdefault(r["round"], {})[r["entry"]] = r[field]
    return [v[num] / v[den] for _, v in sorted(by_round.items()) if num in v and den in v and v[den] > 0]


def targets(rows: list[Row]) -> list[dict]:
    """The issues' targets, wherever both sides were measured in this run."""
    out = []
    for family, case in dict.fromkeys((r.family, r.case) for r in rows):
        clip, setup = split_case(case)
        for clips, setups, num, den, limit, metric, source in TARGETS:
            if (clips is not None and clip not in clips) or setup not in setups:
                continue
            want = Entry.parse(num)
            for row in rows:
                if (row.family, row.case) != (family, case):
                    continue
                entry = Entry.parse(row.entry)
                if (entry.system, entry.variant) != (want.system, want.variant):
                    continue
                d = Entry.parse(den)
                den_key = Entry(d.system, d.variant, entry.backend if d.system == entry.system else None).key
                other = find_row(rows, family, case, den_key)
                if other is None or row is other:
                    continue
                a, b = metric_value(row, metric), metric_value(other, metric)
                if a is None or not b:
                    continue
                value = a / b
                target = {"family": family, "case": case, "ratio": f"{row.entry}/{den_key}", "metric": metric,
                          "value": round(value, 3), "limit": limit, "ok": value <= limit, "source": source}
                if entry.system != d.system:
                    target["same_text"] = normalized_words(row.text) == normalized_words(other.text)
                out.append(target)
    return out


# ---- the benchmark ---------------------------------------------------------------------------


def run_bench(measures: list[Measure], repeats: int = 3, threads: int = 2, cache: Path = DEFAULT_CACHE,
              log=None, skipped: list[str] | None = None) -> dict:
    """Measure every entry of `measures` `repeats` times, taking turns within each round (the
    order rotates each round); returns {"machine", "config", "rows", "runs", "targets", "skipped"}."""
    if not measures:
        raise BenchError("nothing to measure (no system can run the setups asked for)")
    missing = [m.entry.system for m in measures if m.entry.system not in installed_systems()]
    if missing:
        raise BenchError(f"not installed: {', '.join(dict.fromkeys(missing))}")
    for m in measures:
        why = unsupported(m.entry.system, m.setup)
        if why is not None:
            raise BenchError(f"{m.label}: {why}")
    clips = {c: prepare_clip(c, cache) for c in dict.fromkeys(m.clip for m in measures)}
    models = {m: model_path(m.entry, m.family, cache) for m in measures}
    runs: list[dict] = []

    def runner(m: Measure):
        return lambda: run_once(m, models[m], clips[m.clip], threads)

    def record(m: Measure, rnd: int, res: dict) -> None:
        run = {"family": m.family, "case": m.case, "entry": m.entry.key, "round": rnd,
               **{k: res[k] for k in ("import_s", "load_s", "transcribe_s", "peak_mb", "backend", "n_words", "text")},
               "wer": clip_wer(clips[m.clip], res["text"])}
        runs.append(run)
        if log:
            log(f"round {rnd + 1}/{repeats} {m.label}: {run['transcribe_s']:.2f} s, load {run['load_s']:.2f} s, "
                f"{run['peak_mb']:.0f} MiB, WER {run['wer']:.1f}%")

    interleave({m: runner(m) for m in measures}, repeats, on_result=record)
    rows = aggregate(runs, {c.id: c.seconds for c in clips.values()})
    return {
        "machine": machine(threads, PEER_DISTS),
        "config": {"families": list(dict.fromkeys(m.family for m in measures)),
                   "clips": {c.id: {"seconds": round(c.seconds, 2), "source": CLIPS[c.id][0]} for c in clips.values()},
                   "setups": {s: SETUPS[s].about for s in dict.fromkeys(m.setup for m in measures)},
                   "entries": list(dict.fromkeys(m.entry.key for m in measures)),
                   "repeats": repeats, "threads": threads, "statistic": "min"},
        "rows": [asdict(r) for r in rows],
        "runs": runs,
        "targets": targets(rows),
        "skipped": list(skipped or []),
    }


def rows_from(result: dict) -> list[Row]:
    return [Row(**r) for r in result["rows"]]


# ---- the report ------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    """A markdown table of the rows, then the targets, skipped setups and the machine."""
    rows = rows_from(result)
    head = ("| model | clip | setup | system | backend | transcribe s (min) | median | vs faster-whisper "
            "| RTF | load s | peak MiB | WER % |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        clip, setup = split_case(r.case)
        fw = find_row(rows, r.family, r.case, "faster-whisper:fp32")
        vs = f"{r.seconds / fw.seconds:.2f}x" if fw is not None else "-"
        lines.append(f"| {r.family} | {clip} ({r.audio_s:.0f} s) | {setup} | {r.entry.replace(':', ' ')} "
                     f"| {r.backend} | {r.seconds:.2f} | {r.median_s:.2f} | {vs} | {r.rtf:.3f} | {r.load_s:.2f} "
                     f"| {r.peak_mb:.0f} | {r.wer:.1f} |")
    if result["targets"]:
        lines += ["", "| model | case | target | value | limit | | text |", "|---|---|---|---|---|---|---|"]
        for t in result["targets"]:
            what = {"peak_mb": "peak memory", "load": "load time"}.get(t["metric"], "time")
            same = {True: "same", False: "differs"}.get(t.get("same_text"), "")
            lines.append(f"| {t['family']} | {t['case']} | {t['ratio']} ({what}; {t['source']}) | {t['value']:.2f} "
                         f"| <= {t['limit']} | {'ok' if t['ok'] else 'MISSED'} | {same} |")
    if result.get("skipped"):
        lines += ["", "Not measured: " + "; ".join(result["skipped"]) + "."]
    m = result["machine"]
    warning = busy_warning(m)
    if warning:
        lines += ["", warning]
    cfg = result["config"]
    lines += ["", f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads; {cfg['repeats']} interleaved "
              f"repetitions (fresh process each), fastest shown; load average at end {m['load_avg_at_end']}; "
              f"git {m.get('git')}"]
    lines += [f"- {name}: {about}" for name, about in cfg["setups"].items()]
    return "\n".join(lines)


if __name__ == "__main__":  # the child: python -m benchmarks.cpu SPEC_JSON RESULT_PATH
    write_atomic(Path(sys.argv[2]), json.dumps(_child(json.loads(sys.argv[1]))))
    sys.exit(0)
