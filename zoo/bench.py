"""Speed benchmark: whisper_mlx against the installed peers on the same weights and audio.

Every measurement is one child process (`python -m zoo.bench SPEC RESULT`) that imports one
system, loads one model and transcribes one clip, so import, load, transcription time and peak
memory (VmHWM) are that system's alone. Systems alternate within each repetition; rows report
medians. A CI speed check compares same-run ratios (whisper_mlx / faster-whisper) to a baseline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".cache" / "bench"

# system -> the module whose presence means "installed"
SYSTEMS = {
    "whisper_mlx": "whisper_mlx",
    "faster-whisper": "faster_whisper",
    "openai-whisper": "whisper",
    "mlx-whisper": "mlx_whisper",
}
VARIANTS = {"fp32": ("float32", None), "8bit": ("float16", 8), "4bit": ("float16", 4)}
# clip id -> (zoo/clips.yaml id, seconds kept: None = the whole clip)
CLIPS = {"clip30": ("en_long_story", 30.0), "bench_long": ("bench_long", None)}
# targets from the issue: (numerator, denominator, max ratio, what is compared)
TARGETS = (
    ("whisper_mlx:fp32", "faster-whisper:fp32", 1.0, "time"),
    ("whisper_mlx:8bit", "whisper_mlx:fp32", 1.2, "time"),
    ("whisper_mlx:4bit", "whisper_mlx:fp32", 1.2, "time"),
    ("whisper_mlx:fp32", "faster-whisper:fp32", 1.0, "peak_mb"),
)


class BenchError(RuntimeError):
    """A benchmark that cannot run (bad baseline, missing system, failed child); one clear line."""


# ---- what is measured ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One timed thing: a system on a model variant (peers run fp32 only)."""

    system: str
    variant: str = "fp32"

    @property
    def key(self) -> str:
        return f"{self.system}:{self.variant}"

    @classmethod
    def parse(cls, key: str) -> "Entry":
        """"whisper_mlx:4bit" -> Entry; raises ValueError naming the bad part."""
        system, _, variant = key.partition(":")
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r} (known: {', '.join(SYSTEMS)})")
        variant = variant or "fp32"
        allowed = VARIANTS if system == "whisper_mlx" else ("fp32",)
        if variant not in allowed:
            raise ValueError(f"{system} has no variant {variant!r} (known: {', '.join(allowed)})")
        return cls(system, variant)


@dataclass(frozen=True)
class BenchClip:
    """Audio with its known words; `trimmed` clips are scored against the best-matching prefix."""

    id: str
    path: Path
    text: str
    seconds: float
    trimmed: bool


@dataclass
class Run:
    """One child process's measurement."""

    entry: str
    family: str
    clip: str
    repeat: int
    import_s: float
    load_s: float
    transcribe_s: float
    peak_mb: float
    text: str
    wer: float


@dataclass
class Row:
    """Medians over the repetitions of one entry on one family and clip."""

    entry: str
    family: str
    clip: str
    audio_s: float
    repeats: int
    transcribe_s: float
    load_s: float
    import_s: float
    rtf: float
    peak_mb: float
    wer: float
    vs_whisper_mlx: float | None = None
    times: list[float] = field(default_factory=list)
    text: str = ""


def installed_systems() -> list[str]:
    """The systems whose Python package is importable here."""
    return [name for name, module in SYSTEMS.items() if importlib.util.find_spec(module) is not None]


def default_entries(systems: list[str], variants: list[str]) -> list[Entry]:
    """whisper_mlx in each requested variant, then every other system at fp32."""
    out = [Entry("whisper_mlx", v) for v in variants] if "whisper_mlx" in systems else []
    return out + [Entry(s) for s in systems if s != "whisper_mlx"]


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


def run_once(entry: Entry, model: Path, clip: BenchClip, threads: int, timeout_s: float = 1800) -> dict:
    """Measure `entry` transcribing `clip` in a fresh interpreter; returns the child's result."""
    spec = {"system": entry.system, "model": str(model), "audio": str(clip.path), "threads": threads}
    with tempfile.TemporaryDirectory(prefix="whisper-mlx-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "zoo.bench", json.dumps(spec), str(result)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=thread_env(threads), capture_output=True,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{entry.key} on {clip.path}: no result within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise BenchError(f"{entry.key} on {clip.path}: child failed: {tail[0]}")
        return json.loads(result.read_text())


# ---- scoring and aggregation -----------------------------------------------------------------


def clip_wer(clip: BenchClip, hypothesis: str) -> float:
    """WER (percent) against the clip's text; for a trimmed clip, against the non-empty prefix of
    its text closest to the hypothesis (ties: the shorter), since words after the cut were never
    spoken."""
    from zoo.gates import normalize

    ref, hyp = normalize(clip.text), normalize(hypothesis)
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


def aggregate(runs: list[Run], audio_s: dict[str, float]) -> list[Row]:
    """Median per (family, clip, entry), in first-seen order, with time ratios to whisper_mlx fp32."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.family, run.clip, run.entry), []).append(run)
    rows = []
    for (family, clip, entry), group in groups.items():
        med = statistics.median(r.transcribe_s for r in group)
        rows.append(Row(
            entry=entry, family=family, clip=clip, audio_s=audio_s[clip], repeats=len(group),
            transcribe_s=med,
            load_s=statistics.median(r.load_s for r in group),
            import_s=statistics.median(r.import_s for r in group),
            rtf=med / audio_s[clip],
            peak_mb=statistics.median(r.peak_mb for r in group),
            wer=max(r.wer for r in group),
            times=[r.transcribe_s for r in group],
            text=group[0].text,
        ))
    for row in rows:
        ref = find_row(rows, row.family, row.clip, "whisper_mlx:fp32")
        row.vs_whisper_mlx = row.transcribe_s / ref.transcribe_s if ref else None
    return rows


def find_row(rows: list[Row], family: str, clip: str, entry: str) -> Row | None:
    return next((r for r in rows if (r.family, r.clip, r.entry) == (family, clip, entry)), None)


def ratio(rows: list[Row], family: str, clip: str, num: str, den: str, metric: str = "time") -> float | None:
    """num's median transcription time (or peak memory) over den's, same run; None if either is missing."""
    a, b = find_row(rows, family, clip, num), find_row(rows, family, clip, den)
    if a is None or b is None:
        return None
    attr = "transcribe_s" if metric == "time" else "peak_mb"
    return getattr(a, attr) / getattr(b, attr)


def targets(rows: list[Row]) -> list[dict]:
    """The issue's targets, for every family and clip where both sides were measured."""
    out = []
    for family, clip in dict.fromkeys((r.family, r.clip) for r in rows):
        for num, den, limit, metric in TARGETS:
            value = ratio(rows, family, clip, num, den, metric)
            if value is not None:
                out.append({"family": family, "clip": clip, "ratio": f"{num}/{den}", "metric": metric,
                            "value": round(value, 3), "limit": limit, "ok": value <= limit})
    return out


# ---- the benchmark ---------------------------------------------------------------------------


def run_bench(
    families: list[str],
    clips: list[str],
    entries: list[Entry],
    repeats: int = 3,
    threads: int = 2,
    cache: Path = DEFAULT_CACHE,
    log=None,
) -> dict:
    """Measure every entry on every family and clip, alternating entries within each repetition
    (the order rotates each repetition); returns {"machine", "config", "rows", "runs", "targets"}."""
    missing = [e.system for e in entries if e.system not in installed_systems()]
    if missing:
        raise BenchError(f"not installed: {', '.join(dict.fromkeys(missing))}")
    bench_clips = {c: prepare_clip(c, cache) for c in clips}
    models = {(f, e): model_path(e, f, cache) for f in families for e in entries}
    runs: list[Run] = []
    for family in families:
        for clip in bench_clips.values():
            for rep in range(repeats):
                shift = rep % len(entries)
                for entry in entries[shift:] + entries[:shift]:
                    res = run_once(entry, models[family, entry], clip, threads)
                    run = Run(entry.key, family, clip.id, rep, res["import_s"], res["load_s"],
                              res["transcribe_s"], res["peak_mb"], res["text"], clip_wer(clip, res["text"]))
                    runs.append(run)
                    if log:
                        log(f"{family} {clip.id} rep {rep + 1}/{repeats} {entry.key}: "
                            f"{run.transcribe_s:.2f} s, {run.peak_mb:.0f} MiB, WER {run.wer:.1f}%")
    rows = aggregate(runs, {c.id: c.seconds for c in bench_clips.values()})
    return {
        "machine": machine(threads),
        "config": {"families": families, "clips": {c.id: {"seconds": round(c.seconds, 2), "source": CLIPS[c.id][0]}
                                                   for c in bench_clips.values()},
                   "entries": [e.key for e in entries], "repeats": repeats, "threads": threads,
                   "decoding": "greedy, temperature 0.0, condition_on_previous_text, no word timestamps"},
        "rows": [asdict(r) for r in rows],
        "runs": [asdict(r) for r in runs],
        "targets": targets(rows),
    }


def machine(threads: int) -> dict:
    """What the numbers were measured on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("mlx", "whisper-mlx", "faster-whisper", "ctranslate2", "openai-whisper", "torch", "mlx-whisper"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "load_avg_at_end": _load_avg(), "versions": versions,
            "git": _git_revision()}


def _git_revision() -> str | None:
    """The checkout's commit ("+dirty" with uncommitted changes to whisper_mlx/), or None."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "whisper_mlx"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty else "")) or None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def rows_from(result: dict) -> list[Row]:
    return [Row(**r) for r in result["rows"]]


# ---- the report ------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    """A markdown table of the medians, then the targets."""
    head = ("| model | clip | system | transcribe s (median) | vs whisper_mlx fp32 | RTF | load s "
            "| peak MiB | WER % |")
    lines = [head, "|" + "---|" * 9]
    for r in rows_from(result):
        vs = f"{r.vs_whisper_mlx:.2f}x" if r.vs_whisper_mlx is not None else "-"
        lines.append(f"| {r.family} | {r.clip} ({r.audio_s:.0f} s) | {r.entry.replace(':', ' ')} "
                     f"| {r.transcribe_s:.2f} | {vs} | {r.rtf:.3f} | {r.load_s:.2f} | {r.peak_mb:.0f} "
                     f"| {r.wer:.1f} |")
    if result["targets"]:
        lines += ["", "| model | clip | target | value | limit | |", "|---|---|---|---|---|---|"]
        for t in result["targets"]:
            what = "peak memory" if t["metric"] == "peak_mb" else "time"
            lines.append(f"| {t['family']} | {t['clip']} | {t['ratio']} ({what}) | {t['value']:.2f} "
                         f"| <= {t['limit']} | {'ok' if t['ok'] else 'MISSED'} |")
    m = result["machine"]
    load = m.get("load_avg_at_end") or [0.0]
    if load[-1] > m["cores"]:
        lines += ["", f"WARNING: the machine was busy (15-min load average {load[-1]} on {m['cores']} cores): "
                      "other processes competed for the CPU, times are inflated and ratios unreliable."]
    lines += ["", f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads; {result['config']['repeats']} "
              f"alternating repetitions; load average at end {m['load_avg_at_end']}; git {m.get('git')}"]
    return "\n".join(lines)


# ---- the child process --------------------------------------------------------------------


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20 if sys.platform == "darwin" else 1024)


def _child(spec: dict) -> dict:
    """Import one system, load its model, transcribe greedily; time each step separately."""
    system, model, audio, threads = spec["system"], spec["model"], spec["audio"], spec["threads"]
    t0 = time.perf_counter()
    if system == "whisper_mlx":
        import whisper_mlx

        t1 = time.perf_counter()
        m = whisper_mlx.load_model(model)
        t2 = time.perf_counter()
        text = whisper_mlx.transcribe(audio, model=m, temperature=0.0, condition_on_previous_text=True)["text"]
    elif system == "faster-whisper":
        from faster_whisper import WhisperModel

        t1 = time.perf_counter()
        m = WhisperModel(model, device="cpu", compute_type="float32", cpu_threads=threads)
        t2 = time.perf_counter()
        segments, _ = m.transcribe(audio, beam_size=1, temperature=0.0, condition_on_previous_text=True,
                                   without_timestamps=False)
        text = "".join(s.text for s in list(segments))  # lazy: decoding happens here
    elif system == "openai-whisper":
        import torch
        import whisper

        torch.set_num_threads(threads)
        t1 = time.perf_counter()
        m = whisper.load_model(model, device="cpu")
        t2 = time.perf_counter()
        text = m.transcribe(audio, fp16=False, temperature=0.0, condition_on_previous_text=True)["text"]
    elif system == "mlx-whisper":
        from whisper_mlx import runtime  # noqa: F401  (the same OpenBLAS as whisper_mlx)

        import mlx.core as mx
        import mlx_whisper
        from mlx_whisper.transcribe import ModelHolder

        t1 = time.perf_counter()
        ModelHolder.get_model(model, mx.float32)  # transcribe() reuses this load
        t2 = time.perf_counter()
        text = mlx_whisper.transcribe(audio, path_or_hf_repo=model, temperature=0.0, fp16=False,
                                      condition_on_previous_text=True)["text"]
    else:
        raise BenchError(f"unknown system {system!r}")
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "load_s": t2 - t1, "transcribe_s": t3 - t2, "peak_mb": _peak_mb(),
            "text": text.strip()}


def write_atomic(path: Path, text: str) -> None:
    """Write a file by temp file + rename, so a failure leaves the old one intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


if __name__ == "__main__":  # the child: python -m zoo.bench SPEC_JSON RESULT_PATH
    write_atomic(Path(sys.argv[2]), json.dumps(_child(json.loads(sys.argv[1]))))
    sys.exit(0)  # stop here: nothing below (pydantic's ~20 MiB) counts toward the child's peak

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator  # noqa: E402


# ---- the CI speed check ----------------------------------------------------------------------


class Baseline(BaseModel):
    """benchmarks/baseline.json: same-run time ratios that CI must not exceed by > tolerance."""

    model_config = ConfigDict(extra="forbid")

    family: str = "tiny.en"
    clip: str = "clip30"
    repeats: int = Field(default=3, ge=1)
    threads: int = Field(default=2, ge=1)
    tolerance: float = Field(ge=0)
    ratios: dict[str, float] = Field(min_length=1)
    max_wer: float | None = Field(default=None, ge=0)  # whisper_mlx's WER cap: fast but wrong fails
    measured: dict | None = None  # provenance: machine, command, raw medians (not checked)

    @field_validator("clip")
    @classmethod
    def _known_clip(cls, v: str) -> str:
        if v not in CLIPS:
            raise ValueError(f"unknown clip {v!r} (known: {', '.join(CLIPS)})")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratio_keys(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            num, sep, den = key.partition("/")
            if not sep:
                raise ValueError(f"key {key!r} is not 'system:variant/system:variant'")
            Entry.parse(num), Entry.parse(den)
            if value <= 0:
                raise ValueError(f"{key!r}: a ratio must be positive, not {value}")
        return v

    def entries(self) -> list[Entry]:
        keys = [k for key in self.ratios for k in key.split("/")]
        return [Entry.parse(k) for k in dict.fromkeys(keys)]


def load_baseline(path: Path) -> Baseline:
    """Read and validate a baseline file; errors name the file and the field."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise BenchError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: not valid JSON ({e})") from None
    try:
        return Baseline.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise BenchError(f"{path}: field {where}: {err['msg']}") from None


def check(result: dict, baseline: Baseline) -> list[str]:
    """Failures (empty: pass): each ratio over baseline * (1 + tolerance), and whisper_mlx's WER
    over max_wer."""
    rows = rows_from(result)
    failures = []
    for key, base in baseline.ratios.items():
        num, den = key.split("/")
        value = ratio(rows, baseline.family, baseline.clip, num, den)
        if value is None:
            failures.append(f"{key}: not measured")
            continue
        limit = base * (1 + baseline.tolerance)
        if value > limit:
            failures.append(f"speed regression: {key} = {value:.3f} on {baseline.family} {baseline.clip} "
                            f"exceeds baseline {base:.3f} x (1 + {baseline.tolerance:g}) = {limit:.3f}")
    if baseline.max_wer is not None:
        for row in rows:
            if row.entry.startswith("whisper_mlx:") and row.wer > baseline.max_wer:
                failures.append(f"accuracy: {row.entry} WER {row.wer:.1f}% on {row.family} {row.clip} "
                                f"exceeds max_wer {baseline.max_wer:g}%")
    return failures


def run_check(baseline: Baseline, cache: Path = DEFAULT_CACHE, repeats: int | None = None, log=None) -> tuple[dict, list[str]]:
    """Measure what the baseline names (its family, clip, repetitions) and compare."""
    result = run_bench([baseline.family], [baseline.clip], baseline.entries(),
                       repeats=repeats or baseline.repeats, threads=baseline.threads, cache=cache, log=log)
    return result, check(result, baseline)


def baseline_from(result: dict, ratios: list[str], tolerance: float, command: str,
                  max_wer: float | None = None) -> dict:
    """A baseline file's contents from a measurement of one family and clip."""
    rows = rows_from(result)
    family, clip = rows[0].family, rows[0].clip
    measured = {}
    for key in ratios:
        num, den = key.split("/")
        value = ratio(rows, family, clip, num, den)
        if value is None:
            raise BenchError(f"{key}: not measured in this run")
        measured[key] = round(value, 3)
    return {
        "family": family, "clip": clip, "repeats": result["config"]["repeats"],
        "threads": result["config"]["threads"], "tolerance": tolerance, "ratios": measured,
        "max_wer": max_wer,
        "measured": {"command": command, "machine": result["machine"],
                     "median_s": {r.entry: round(r.transcribe_s, 3) for r in rows}},
    }
