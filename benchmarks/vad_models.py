"""Where batched transcription's word error rate comes from: the decoder, or the VAD's cuts.

whisper_mlx's VAD is Silero v6.2 (`silero-vad` 6.2.3's model); faster-whisper 1.2 bundles Silero
v6.0 (`faster_whisper/assets/silero_vad_v6.onnx`, the probabilities of `silero-vad` 6.0.0's
model). The two put speech boundaries up to a frame or two apart, so the 30 s chunks hold slightly
different audio. This runs whisper_mlx's batched decoder (batch 8, greedy) on the same audio twice:
once cut by its own VAD, once with faster-whisper's speech regions put in place of its own (same
parameters: faster-whisper's batched ones), and faster-whisper's `BatchedInferencePipeline` once,
each scored against the known text:
- the 3.4 min `bench_long` clip (the clip of tools.bench's batch8 rows);
- every English parity and held-out clip (6-40 s each), as one pooled WER.

    python -m benchmarks.vad_models --family tiny.en base --out benchmarks/vad-models-linux-cpu-2core
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from benchmarks.core import DEFAULT_CACHE, git_revision, machine, write_atomic

FW_BATCHED_VAD = dict(max_speech_duration_s=30, min_silence_duration_ms=160)  # BatchedInferencePipeline's


def _clips(cache: Path) -> list[tuple[str, object, str]]:
    """(id, 16 kHz samples, known text): bench_long, then the short English clips."""
    from benchmarks.cpu import prepare_clip
    from whisper_mlx.audio import load_audio
    from zoo.speech import load_specs, make_clips

    bench = prepare_clip("bench_long", cache)
    out = [("bench_long", load_audio(str(bench.path)), bench.text)]
    specs = load_specs()
    ids = [i for i, s in specs.items() if s.split in ("parity", "heldout") and s.language == "en"]
    for clip in make_clips(cache / "clips", ids).values():
        out.append((clip.id, load_audio(str(clip.path)), clip.text))
    return out


def measure(family: str, clips: list, cache: Path) -> dict:
    from faster_whisper import BatchedInferencePipeline, WhisperModel
    from faster_whisper.vad import VadOptions as FasterVadOptions
    from faster_whisper.vad import get_speech_timestamps as faster_speech

    import whisper_mlx
    from benchmarks.cpu import ctranslate2_dir, whisper_mlx_dir
    from whisper_mlx import batched
    from zoo.gates import corpus_wer

    ours = whisper_mlx.load_model(whisper_mlx_dir(family, "fp32", cache))
    pipe = BatchedInferencePipeline(WhisperModel(str(ctranslate2_dir(family, cache)), device="cpu",
                                                 compute_type="float32"))
    own_vad = batched.get_speech_timestamps
    texts: dict[str, list[str]] = {"whisper_mlx, its VAD (Silero v6.2)": [],
                                   "whisper_mlx, faster-whisper's VAD regions (Silero v6.0)": [],
                                   "faster-whisper BatchedInferencePipeline (Silero v6.0)": []}
    names = list(texts)
    for _, audio, _ in clips:
        for name, vad in ((names[0], own_vad),
                          (names[1], lambda a, _: faster_speech(a, FasterVadOptions(**FW_BATCHED_VAD)))):
            batched.get_speech_timestamps = vad
            try:
                texts[name].append(whisper_mlx.transcribe(audio, model=ours, batch_size=8, vad_filter=True,
                                                          temperature=0.0)["text"])
            finally:
                batched.get_speech_timestamps = own_vad
        segments, _ = pipe.transcribe(audio, batch_size=8, beam_size=1, temperature=0.0)
        texts[names[2]].append("".join(s.text for s in segments))
    truth = [t for _, _, t in clips]
    return {"wer": {name: {"bench_long": round(corpus_wer([(truth[0], got[0])]), 2),
                           "short clips": round(corpus_wer(list(zip(truth[1:], got[1:]))), 2)}
                    for name, got in texts.items()},
            "same_text_with_same_regions": texts[names[1]][0] == texts[names[2]][0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", nargs="+", default=["tiny.en", "base"])
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = p.parse_args(argv)
    clips = _clips(args.cache)
    results = {family: measure(family, clips, args.cache) for family in args.family}
    record = {"date": date.today().isoformat(), "git": git_revision(), "machine": machine(),
              "clips": [c for c, _, _ in clips], "results": results,
              "command": "python -m benchmarks.vad_models " + " ".join(sys.argv[1:] if argv is None else argv)}
    lines = [f"# Batched WER by VAD model ({record['date']}, git {record['git']})", "",
             f"Command: `{record['command']}`", "",
             "| model | decoder, speech regions | WER % bench_long (3.4 min) | WER % short English clips |",
             "|---|---|---|---|"]
    for family, result in results.items():
        for name, row in result["wer"].items():
            lines.append(f"| {family} | {name} | {row['bench_long']} | {row['short clips']} |")
    lines += ["", "Same regions, same text on bench_long (whisper_mlx with faster-whisper's regions against "
              "faster-whisper): " + ", ".join(f"{f} {'yes' if r['same_text_with_same_regions'] else 'no'}"
                                              for f, r in results.items()) + ".", "",
              f"Short clips: {', '.join(c for c, _, _ in clips[1:])}. Greedy, batch 8, no temperature fallback "
              "beyond temperature 0, WER on lowercased words without punctuation (`zoo.gates.wer`)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_atomic(args.out.with_suffix(".md"), text)
        write_atomic(args.out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
