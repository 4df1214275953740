"""Quality gates: run a variant on the gate clips and compare with a reference and the truth.

The reference (the family's `gates.reference`) runs on the same checkpoint in fp32 on the CPU:
- openai-whisper: per clip, transcript identity with openai-whisper's (greedy, whole clip);
- transformers, for models openai-whisper does not define (Distil-Whisper): per clip, on its
  first 30 s window (the whole clip when shorter; no timestamps), the greedy tokens identical to
  transformers' greedy `generate`, and the logits of every decoding step within
  `max_logit_diff` of transformers' (PyTorch) logits for the same tokens.
Per clip also WER vs the known text; per variant real-time factor and peak memory, as ratios to
the fp32 sibling measured in the same run. Thresholds come from the manifest
(zoo.manifest.Thresholds).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import unicodedata
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .manifest import Thresholds, Variant
from .sources import Checkpoint, write_openai_checkpoint

REFERENCE_ENGINE = "openai-whisper"


@dataclass
class Reference:
    """What a family's variants are compared with, clip by clip."""

    engine: str  # zoo.manifest.REFERENCE_ENGINES
    options: str
    texts: dict[str, str]  # openai-whisper: whole clips; transformers: first windows
    tokens: dict[str, list[int]] = field(default_factory=dict)  # transformers: first windows' greedy tokens
    # transformers: (clip id) -> logits (steps, n_vocab) along the clip's greedy tokens
    logits: Callable[[str], np.ndarray] | None = None

    @property
    def first_windows(self) -> bool:
        """Whether the comparison is over each clip's first window (else whole transcripts)."""
        return self.engine == "transformers"


@dataclass
class Measurement:
    """One model directory run over the gate clips."""

    texts: dict[str, str]
    rtf: float
    peak_memory_mb: float
    seconds: float
    # against a first-window reference: each clip's greedy first-window tokens and text, and the
    # largest absolute difference of the decoding steps' logits from the reference's
    window_tokens: dict[str, list[int]] = field(default_factory=dict)
    window_texts: dict[str, str] = field(default_factory=dict)
    logit_diffs: dict[str, float] = field(default_factory=dict)


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


def first_window(path: Path, n_mels: int):
    """A clip's first 30 s window of log-mel (N_FRAMES, n_mels), as transcribe computes it."""
    from whisper_mlx.audio import N_FRAMES, load_mel, pad_or_trim

    mel = load_mel(str(path), n_mels)
    return pad_or_trim(mel.segment(0, min(N_FRAMES, mel.content_frames)), N_FRAMES, axis=0)


def window_options(variant: Variant, clip):
    """How a first window is decoded against the transformers reference: greedy, no timestamps."""
    from whisper_mlx.decoding import DecodingOptions

    return DecodingOptions(language=clip_language(variant, clip), temperature=0.0, without_timestamps=True)


def _window_checks(model, variant: Variant, clips: dict, reference: Reference, m: Measurement) -> None:
    """Greedy first-window tokens of every clip and, where the variant has a max_logit_diff gate,
    the largest difference of its decoding steps' logits from the reference's, along the
    reference's tokens (through the model's decoding backend, as transcription runs)."""
    from whisper_mlx.backends import backend_for
    from whisper_mlx.decoding import _initial_tokens, decode
    from whisper_mlx.tokenizer import get_tokenizer

    for clip_id, clip in clips.items():
        mel = first_window(clip.path, model.dims.n_mels)
        options = window_options(variant, clip)
        result = decode(model, mel, options)
        m.window_tokens[clip_id], m.window_texts[clip_id] = list(result.tokens), result.text
        if variant.thresholds.max_logit_diff is None or reference.logits is None:
            continue
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                  language=options.language, task=options.task)
        initial = _initial_tokens(tokenizer, options, model.dims.n_text_ctx, model.dims.n_text_ctx // 2)
        backend = backend_for(model)
        session = backend.session(backend.encode(mel[None]), 1)
        session.prefill(np.array([initial]), initial.index(tokenizer.sot))
        steps = [session.pending_logits()[0]]
        for token in reference.tokens[clip_id]:
            session.feed(np.array([token]))
            steps.append(session.pending_logits()[0])
        theirs = reference.logits(clip_id)
        m.logit_diffs[clip_id] = float(np.abs(np.stack(steps) - theirs).max())


def measure(model_dir: Path, variant: Variant, clips: dict, reference: Reference | None = None) -> Measurement:
    """Transcribe every gate clip with whisper_mlx (greedy); time it and track peak memory. Against
    a first-window reference, also decode each clip's first window (`_window_checks`)."""
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
    m = Measurement(texts=texts, rtf=busy / max(audio, 1e-9), peak_memory_mb=peak, seconds=busy)
    if reference is not None and reference.first_windows:
        _window_checks(model, variant, clips, reference, m)
    del model
    mx.clear_cache()
    return m


def reference_cache_dir() -> Path:
    """Where openai-whisper reference transcripts are cached ($WHISPER_MLX_CACHE or ~/.cache)."""
    if os.environ.get("WHISPER_MLX_CACHE"):
        return Path(os.environ["WHISPER_MLX_CACHE"]).expanduser() / "references"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "whisper-mlx" / "references"


def reference_transcripts(
    ckpt: Checkpoint, variant: Variant, clips: dict, cache_dir: Path | None = None
) -> Reference:
    """The family's reference (`gates.reference`) on the clips: openai-whisper's transcripts, or
    transformers' first-window greedy generations (`transformers_reference`)."""
    if variant.family.gates.reference == "transformers":
        return transformers_reference(ckpt, variant, clips, cache_dir)
    texts = openai_transcripts(ckpt, variant, clips, cache_dir)
    return Reference(engine=REFERENCE_ENGINE, options="fp32, CPU, greedy, whole clips", texts=texts)


def openai_transcripts(
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


def transformers_model(ckpt: Checkpoint):
    """transformers' WhisperForConditionalGeneration (PyTorch, fp32, CPU) on the checkpoint: loaded
    with from_pretrained from the directory a transformers source was read from, else built from
    the state dict (names mapped back to transformers')."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from .sources.transformers import CONFIG, openai_to_hf

    if ckpt.source_dir is not None and (Path(ckpt.source_dir) / CONFIG).is_file():
        model = WhisperForConditionalGeneration.from_pretrained(str(ckpt.source_dir), dtype=torch.float32)
    else:
        d = ckpt.dims
        config = WhisperConfig(
            vocab_size=d["n_vocab"], num_mel_bins=d["n_mels"], d_model=d["n_audio_state"],
            encoder_layers=d["n_audio_layer"], encoder_attention_heads=d["n_audio_head"],
            decoder_layers=d["n_text_layer"], decoder_attention_heads=d["n_text_head"],
            encoder_ffn_dim=4 * d["n_audio_state"], decoder_ffn_dim=4 * d["n_text_state"],
            max_source_positions=d["n_audio_ctx"], max_target_positions=d["n_text_ctx"],
        )
        model = WhisperForConditionalGeneration(config)
        state = {openai_to_hf(k): torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in ckpt.state_dict.items()}
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
        model.load_state_dict(state, strict=True)
    return model.float().eval()


def _generation_config(tokenizer, rules, multilingual: bool, sample_len: int, prompt: tuple):
    """transformers' GenerationConfig for openai-whisper's greedy decoding without timestamps:
    the same prompt and the same suppressed tokens (`rules`, whisper_mlx's description of them)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        decoder_start_token_id=tokenizer.sot, eos_token_id=tokenizer.eot, pad_token_id=tokenizer.eot,
        bos_token_id=tokenizer.eot, no_timestamps_token_id=tokenizer.no_timestamps,
        suppress_tokens=list(rules.suppress), begin_suppress_tokens=list(rules.blank),
        is_multilingual=multilingual, return_timestamps=False, do_sample=False, num_beams=1,
        max_new_tokens=sample_len, max_length=len(prompt) + sample_len,
    )
    if multilingual:
        config.lang_to_id = {f"<|{code}|>": token for code, token in
                             zip(tokenizer.all_language_codes, tokenizer.all_language_tokens)}
        config.task_to_id = {"transcribe": tokenizer.transcribe, "translate": tokenizer.translate}
    return config


def transformers_reference(
    ckpt: Checkpoint, variant: Variant, clips: dict, cache_dir: Path | None = None
) -> Reference:
    """transformers' greedy generation (PyTorch fp32, CPU) on each clip's first window, with
    openai-whisper's prompt and suppressed tokens; tokens cached per source sha256. The logits
    along those tokens are computed when a gate asks (one teacher-forced pass per clip)."""
    from whisper_mlx.decoding import _initial_tokens, logit_rules
    from whisper_mlx.tokenizer import get_tokenizer

    d = ckpt.dims
    multilingual = d["n_vocab"] >= 51865
    num_languages = d["n_vocab"] - 51765 - int(multilingual)
    cache = (cache_dir or reference_cache_dir()) / f"{ckpt.source_sha256}.transformers.json"
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    state: dict = {}

    def model():
        if "model" not in state:
            state["model"] = transformers_model(ckpt)
        return state["model"]

    def setup(clip):
        options = window_options(variant, clip)
        tokenizer = get_tokenizer(multilingual, num_languages=num_languages, language=options.language,
                                  task=options.task)
        sample_len = d["n_text_ctx"] // 2
        initial = _initial_tokens(tokenizer, options, d["n_text_ctx"], sample_len)
        rules = logit_rules(tokenizer, options, len(initial), d["n_vocab"], d["n_audio_ctx"])
        mel = np.array(first_window(clip.path, d["n_mels"]), np.float32).T[None]  # (1, n_mels, frames)
        return options, tokenizer, initial, rules, sample_len, mel

    def key(clip) -> str:
        return f"{clip.path.name}|{clip_language(variant, clip)}|first-window"

    missing = {i: c for i, c in clips.items() if key(c) not in stored}
    if missing:
        import torch
        from transformers.utils import logging

        logging.set_verbosity_error()  # its notes on deprecated generation arguments are not ours

        for clip in missing.values():
            options, tokenizer, initial, rules, sample_len, mel = setup(clip)
            config = _generation_config(tokenizer, rules, multilingual, sample_len, initial)
            kwargs = {"language": options.language, "task": options.task} if multilingual else {}
            with torch.no_grad():
                out = model().generate(torch.from_numpy(mel), generation_config=config, **kwargs)
            sequence = out[0].tolist() if hasattr(out, "tolist") else out["sequences"][0].tolist()
            if sequence[: len(initial)] == list(initial):
                sequence = sequence[len(initial):]
            tokens = sequence[: sequence.index(tokenizer.eot)] if tokenizer.eot in sequence else sequence
            stored[key(clip)] = {"tokens": tokens, "text": tokenizer.decode(tokens).strip()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=1, ensure_ascii=False)
        os.replace(tmp, cache)

    def logits(clip_id: str) -> np.ndarray:
        import torch

        clip = clips[clip_id]
        _, _, initial, _, _, mel = setup(clip)
        tokens = stored[key(clip)]["tokens"]
        with torch.no_grad():
            out = model()(input_features=torch.from_numpy(mel),
                          decoder_input_ids=torch.tensor([list(initial) + tokens])).logits
        return out[0, len(initial) - 1:].numpy()

    return Reference(
        engine="transformers",
        options="fp32, CPU, greedy generate on each clip's first 30 s window, without timestamps, "
                "openai-whisper's suppressed tokens",
        texts={i: stored[key(c)]["text"] for i, c in clips.items()},
        tokens={i: stored[key(c)]["tokens"] for i, c in clips.items()},
        logits=logits,
    )


def _check(name: str, threshold, value, passed: bool) -> dict:
    return {"name": name, "threshold": threshold, "value": value, "passed": bool(passed)}


def evaluate(
    variant: Variant,
    clips: dict,
    reference: Reference,
    result: Measurement,
    fp32: Measurement,
    thresholds: Thresholds | None = None,
) -> dict:
    """The gate report (eval.json contents) of one variant against its thresholds."""
    t = thresholds or variant.thresholds
    per_clip = []
    for clip_id, clip in clips.items():
        entry = {
            "id": clip_id,
            "language": clip_language(variant, clip),
            "truth": clip.text,
            "reference": reference.texts[clip_id],
            "text": result.texts[clip_id],
            "identical": result.texts[clip_id] == reference.texts[clip_id],
            "wer": round(wer(clip.text, result.texts[clip_id]), 2),
        }
        if reference.first_windows:
            entry["identical"] = result.window_tokens.get(clip_id) == reference.tokens[clip_id]
            entry["first_window"] = {"text": result.window_texts.get(clip_id),
                                     "max_logit_diff": result.logit_diffs.get(clip_id)}
        per_clip.append(entry)
    whole = not reference.first_windows  # a reference of whole clips has a WER of its own
    metrics = {
        "wer": round(corpus_wer([(c.text, result.texts[i]) for i, c in clips.items()]), 2),
        "fp32_wer": round(corpus_wer([(c.text, fp32.texts[i]) for i, c in clips.items()]), 2),
        "reference_wer": round(corpus_wer([(c.text, reference.texts[i]) for i, c in clips.items()]), 2) if whole else None,
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
    if result.logit_diffs:
        metrics["max_logit_diff"] = float(f"{max(result.logit_diffs.values()):.3g}")
    checks = []
    if t.identical_to_reference:
        n, total = metrics["identical_clips"], metrics["clips"]
        checks.append(_check("identical_to_reference", True, f"{n}/{total}", n == total))
    if t.max_logit_diff is not None:
        diff = metrics.get("max_logit_diff")
        checks.append(_check("max_logit_diff", t.max_logit_diff, diff, diff is not None and diff <= t.max_logit_diff))
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
        "reference": {"engine": reference.engine, "version": _version(reference.engine), "options": reference.options},
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
