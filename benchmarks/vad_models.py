"""Where batched transcription's word error rate comes from: the decoder, or the VAD's cuts.

whisper_mlx's VAD is Silero v6.0, the file faster-whisper 1.2 bundles
(`whisper_mlx/assets/silero_vad_v6.onnx`, the probabilities of `silero-vad` 6.0.0's model). This
runs whisper_mlx's batched decoder (batch 8, greedy) on the same audio with its own VAD, and, with
--alt-onnx, with another Silero release's sequence export in its place (e.g. `silero-vad` 6.2.3's
`silero_vad_16k_sequence.onnx`, whisper_mlx's model before 2026-11-30), and faster-whisper's
`BatchedInferencePipeline` once (same VAD parameters: faster-whisper's batched ones), each scored
against the known text:
- the 3.4 min `bench_long` clip (the clip of tools.bench's batch8 rows);
- every English parity and held-out clip (6-40 s each), as one pooled WER.

    python -m benchmarks.vad_models --family tiny.en base --alt-onnx silero_vad_16k_sequence.onnx \
        --alt-name "Silero v6.2" --out benchmarks/vad-models-linux-cpu-2core-DATE
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from benchmarks.core import DEFAULT_CACHE, git_revision, machine, write_atomic


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


def measure(family: str, clips: list, cache: Path, alt: tuple[Path, str] | None) -> dict:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    import whisper_mlx
    from benchmarks.cpu import ctranslate2_dir, whisper_mlx_dir
    from whisper_mlx import vad
    from zoo.gates import corpus_wer

    ours = whisper_mlx.load_model(whisper_mlx_dir(family, "fp32", cache))
    pipe = BatchedInferencePipeline(WhisperModel(str(ctranslate2_dir(family, cache)), device="cpu",
                                                 compute_type="float32"))
    own = "whisper_mlx, its VAD (Silero v6.0)"
    fw = "faster-whisper BatchedInferencePipeline (Silero v6.0)"
    models = {own: vad.MODEL_PATH, **({f"whisper_mlx, {alt[1]} in its place": alt[0]} if alt else {})}
    texts: dict[str, list[str]] = {name: [] for name in [*models, fw]}
    shipped = vad.MODEL_PATH
    for _, audio, _ in clips:
        for name, onnx in models.items():
            vad.MODEL_PATH = onnx
            vad._session.cache_clear()
            try:
                texts[name].append(whisper_mlx.transcribe(audio, model=ours, batch_size=8, vad_filter=True,
                                                          temperature=0.0)["text"])
            finally:
                vad.MODEL_PATH = shipped
                vad._session.cache_clear()
        segments, _ = pipe.transcribe(audio, batch_size=8, beam_size=1, temperature=0.0)
        texts[fw].append("".join(s.text for s in segments))
    truth = [t for _, _, t in clips]
    return {"wer": {name: {"bench_long": round(corpus_wer([(truth[0], got[0])]), 2),
                           "short clips": round(corpus_wer(list(zip(truth[1:], got[1:]))), 2)}
                    for name, got in texts.items()},
            "same_text_as_faster_whisper": {"bench_long": texts[own][0] == texts[fw][0],
                                            "short clips": texts[own][1:] == texts[fw][1:]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", nargs="+", default=["tiny.en", "base"])
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--alt-onnx", type=Path, default=None, help="another Silero sequence export to compare")
    p.add_argument("--alt-name", default="another Silero model", help="its name in the table")
    p.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = p.parse_args(argv)
    clips = _clips(args.cache)
    alt = (args.alt_onnx.resolve(), args.alt_name) if args.alt_onnx else None
    results = {family: measure(family, clips, args.cache, alt) for family in args.family}
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
    lines += ["", "whisper_mlx with its VAD, the same text as faster-whisper: " + "; ".join(
              f"{f}: " + ", ".join(f"{clip} {'yes' if same else 'no'}" for clip, same in
                                   r["same_text_as_faster_whisper"].items()) for f, r in results.items()) + ".", "",
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
