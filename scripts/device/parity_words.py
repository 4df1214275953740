"""Probe: on this machine's CPU, whisper_mlx (C backend, fp32) against openai-whisper on the parity
clips, greedy with word timestamps: per clip, same text or not and the largest word-time
difference (word, both starts, both ends). `python3 scripts/device/parity_words.py base` on the GPU
machine (after unpack.sh) checks whether another CPU's arithmetic moves a word boundary."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import conftest  # noqa: E402
import whisper_mlx  # noqa: E402
from whisper_mlx import runtime  # noqa: E402
from zoo.speech import load_specs, make_clips  # noqa: E402


def words(result: dict) -> list[dict]:
    return [w for s in result["segments"] for w in s["words"]]


def main(name: str) -> None:
    runtime.set_device("cpu")
    print(platform.processor() or platform.machine(), open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0])
    ids = [i for i, s in load_specs().items() if s.split == "parity"]
    clips = make_clips(conftest.CACHE / "clips", ids)
    model_dir = conftest._model_dir(name, "float32")
    reference = conftest.openai_reference(name, model_dir)
    model = whisper_mlx.load_model(model_dir, backend="cpu")
    options = dict(temperature=0.0, word_timestamps=True)
    for clip_id, clip in clips.items():
        ref = reference.transcribe(str(clip.path), fp16=False, **options)
        ours = whisper_mlx.transcribe(str(clip.path), model=model, **options)
        diffs = sorted(((max(abs(a["start"] - b["start"]), abs(a["end"] - b["end"])), a["word"], a["start"], b["start"],
                         a["end"], b["end"]) for a, b in zip(words(ref), words(ours))), reverse=True)
        same = ours["text"] == ref["text"]
        worst = [f"{w!r} start {a:.2f}/{b:.2f} end {c:.2f}/{d:.2f} ({diff:.2f} s)" for diff, w, a, b, c, d in diffs[:2]]
        print(clip_id, "same text" if same else "TEXT DIFFERS", "; ".join(worst), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "base")
