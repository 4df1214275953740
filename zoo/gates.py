"""Quality gates: run a variant on the gate clips and compare with openai-whisper and the truth.

Per clip: transcript identity vs openai-whisper (fp32, CPU, greedy) on the same checkpoint, and
WER vs the known text. Per variant: real-time factor and peak memory, as ratios to the fp32
sibling measured in the same run. Thresholds come from the manifest (zoo.manifest.Thresholds).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import unicodedata
import wave
from dataclasses import dataclass
from pathlib import Path

from .manifest import Thresholds, Variant
from .sources import Checkpoint, write_openai_checkpoint

REFERENCE_ENGINE = "openai-whisper"


@dataclass
class Measurement:
    """One model directory run over the gate clips."""

    texts: dict[str, str]
    rtf: float
    peak_memory_mb: float
    seconds: float


def normalize(text: str) -> list[str]:
    """Lowercase words without punctuation (apostrophes inside words kept)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", " ", text)
    return text.split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(Levenshtein distance on normalized words, number of reference words)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate in percent (100 * edits / reference words)."""
    errors, n = word_errors(reference, hypothesis)
    return 100.0 * errors / max(n, 1)


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """WER over several (reference, hypothesis) pairs: total edits / total reference words."""
    counts = [word_errors(r, h) for r, h in pairs]
    return 100.0 * sum(e for e, _ in counts) / max(sum(n for _, n in counts), 1)


def audio_seconds(path: Path) -> float:
    """Duration of a WAV file."""
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def clip_language(variant: Variant, clip) -> str:
    """English-only families always decode English; multilingual ones use the clip's language."""
    return "en" if variant.family.language == "en" else clip.language


def measure(model_dir: Path, variant: Variant, clips: dict) -> Measurement:
    """Transcribe every gate clip with whisper_mlx (greedy); time it and track peak memory."""
    import mlx.core as mx
    import whisper_mlx

    mx.clear_cache()
    mx.reset_peak_memory()
    model = whisper_mlx.load_model(str(model_dir))
    texts, busy, audio = {}, 0.0, 0.0
    for clip_id, clip in clips.items():
        start = time.perf_counter()
        result = whisper_mlx.transcribe(
            str(clip.path),
            path_or_hf_repo=str(model_dir),
            model=model,
            temperature=0.0,
            condition_on_previous_text=variant.family.gates.condition_on_previous_text,
            language=clip_language(variant, clip),
        )
        busy += time.perf_counter() - start
        audio += audio_seconds(clip.path)
        texts[clip_id] = result["text"].strip()
    peak = mx.get_peak_memory() / 2**20
    del model
    mx.clear_cache()
    return Measurement(texts=texts, rtf=busy / max(audio, 1e-9), peak_memory_mb=peak, seconds=busy)


def reference_cache_dir() -> Path:
    """Where openai-whisper reference transcripts are cached ($WHISPER_MLX_CACHE or ~/.cache)."""
    if os.environ.get("WHISPER_MLX_CACHE"):
        return Path(os.environ["WHISPER_MLX_CACHE"]).expanduser() / "references"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "whisper-mlx" / "references"


def reference_transcripts(
    ckpt: Checkpoint, variant: Variant, clips: dict, cache_dir: Path | None = None
) -> dict[str, str]:
    """openai-whisper's transcripts (fp32, CPU, greedy) of the clips, cached per source sha256.

    The cache key per clip holds the audio file name (a hash of its text and voice) and options.
    """
    cache = (cache_dir or reference_cache_dir()) / f"{ckpt.source_sha256}.json"
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    condition = variant.family.gates.condition_on_previous_text

    def key(clip) -> str:
        return f"{clip.path.name}|{clip_language(variant, clip)}|cond={int(condition)}"

    missing = {i: c for i, c in clips.items() if key(c) not in stored}
    if missing:
        stored.update(_run_reference(ckpt, variant, missing, condition, key))
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=1, ensure_ascii=False)
        os.replace(tmp, cache)
    return {i: stored[key(c)] for i, c in clips.items()}


def _run_reference(ckpt: Checkpoint, variant: Variant, clips: dict, condition: bool, key) -> dict[str, str]:
    """Transcribe with openai-whisper on the checkpoint written as a .pt (torch, lazy)."""
    import whisper  # openai-whisper (dev dependency); torch comes with it

    with tempfile.TemporaryDirectory(prefix="whisper-mlx-ref-") as tmp:
        pt_path = write_openai_checkpoint(ckpt, Path(tmp) / "model.pt")
        model = whisper.load_model(str(pt_path), device="cpu")
    out = {}
    for clip in clips.values():
        result = whisper.transcribe(
            model,
            str(clip.path),
            temperature=0.0,
            condition_on_previous_text=condition,
            language=clip_language(variant, clip),
            fp16=False,
        )
        out[key(clip)] = result["text"].strip()
    return out


def _check(name: str, threshold, value, passed: bool) -> dict:
    return {"name": name, "threshold": threshold, "value": value, "passed": bool(passed)}


def evaluate(
    variant: Variant,
    clips: dict,
    reference: dict[str, str],
    result: Measurement,
    fp32: Measurement,
    thresholds: Thresholds | None = None,
) -> dict:
    """The gate report (eval.json contents) of one variant against its thresholds."""
    t = thresholds or variant.thresholds
    per_clip = []
    for clip_id, clip in clips.items():
        per_clip.append(
            {
                "id": clip_id,
                "language": clip_language(variant, clip),
                "truth": clip.text,
                "reference": reference[clip_id],
                "text": result.texts[clip_id],
                "identical": result.texts[clip_id] == reference[clip_id],
                "wer": round(wer(clip.text, result.texts[clip_id]), 2),
            }
        )
    metrics = {
        "wer": round(corpus_wer([(c.text, result.texts[i]) for i, c in clips.items()]), 2),
        "fp32_wer": round(corpus_wer([(c.text, fp32.texts[i]) for i, c in clips.items()]), 2),
        "reference_wer": round(corpus_wer([(c.text, reference[i]) for i, c in clips.items()]), 2),
        "identical_clips": sum(c["identical"] for c in per_clip),
        "clips": len(per_clip),
        "rtf": round(result.rtf, 4),
        "fp32_rtf": round(fp32.rtf, 4),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "fp32_peak_memory_mb": round(fp32.peak_memory_mb, 1),
    }
    metrics["wer_delta"] = round(metrics["wer"] - metrics["fp32_wer"], 2)
    metrics["rtf_ratio"] = round(result.rtf / max(fp32.rtf, 1e-9), 3)
    metrics["memory_ratio"] = round(result.peak_memory_mb / max(fp32.peak_memory_mb, 1e-9), 3)
    checks = []
    if t.identical_to_reference:
        n, total = metrics["identical_clips"], metrics["clips"]
        checks.append(_check("identical_to_reference", True, f"{n}/{total}", n == total))
    if t.max_wer is not None:
        checks.append(_check("max_wer", t.max_wer, metrics["wer"], metrics["wer"] <= t.max_wer))
    if t.max_wer_delta is not None:
        checks.append(
            _check("max_wer_delta", t.max_wer_delta, metrics["wer_delta"], metrics["wer_delta"] <= t.max_wer_delta)
        )
    if t.max_rtf_ratio is not None:
        checks.append(
            _check("max_rtf_ratio", t.max_rtf_ratio, metrics["rtf_ratio"], metrics["rtf_ratio"] <= t.max_rtf_ratio)
        )
    if t.max_memory_ratio is not None:
        checks.append(
            _check(
                "max_memory_ratio",
                t.max_memory_ratio,
                metrics["memory_ratio"],
                metrics["memory_ratio"] <= t.max_memory_ratio,
            )
        )
    return {
        "variant": variant.name,
        "repo_id": variant.repo_id,
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "metrics": metrics,
        "clips": per_clip,
        "reference": {"engine": REFERENCE_ENGINE, "version": _version("openai-whisper"), "options": "fp32, CPU, greedy"},
        "runtime": {"whisper_mlx": _version("whisper-mlx"), "mlx": _version("mlx")},
        "thresholds": t.model_dump(exclude_none=True),
        "measurement": {"fp32_seconds": round(fp32.seconds, 3), "seconds": round(result.seconds, 3)},
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
