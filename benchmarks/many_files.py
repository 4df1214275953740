"""Many short files at once against one by one (issue 14: ">= 1.8x the throughput").

The same N short files (the English parity clips, 6-10 s each, in turn) transcribed
- one by one: `transcribe(path, model=m)` per file, openai-whisper's defaults (the sequential loop);
- as one many-file run: `transcribe_many(paths, model=m, batch_size=B)`, its defaults (speech
  chunks by Silero VAD where onnxruntime is installed, windows of different files in one batch,
  the speech of several short files packed into one 30 s window), and with `pack=False` (each
  file's speech in its own windows).
Both greedy with the temperature fallback, in one process with the model loaded once, timed by the
one interleaved timer (`benchmarks.core.interleave`, rounds rotating, fastest round kept), with
the word error rate of each against the files' known text.

    python -m benchmarks.many_files --files 20 --batch 8 16 --rounds 3 --out benchmarks/many-files-linux-cpu-2core
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from benchmarks.core import DEFAULT_CACHE, interleave, machine, make_row, timed, write_atomic
from benchmarks.corpus_throughput import CLIPS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20, help="short files (the English parity clips in turn)")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 16], help="transcribe_many batch sizes")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=None, help="model directory (default: tiny.en fp32 from benchmarks.cpu's cache)")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    args = p.parse_args(argv)
    if not (1 <= args.files <= 1000 and 1 <= args.rounds <= 20 and all(1 <= b <= 256 for b in args.batch)):
        p.error("--files 1-1000, --rounds 1-20, --batch 1-256")

    import whisper_mlx
    from whisper_mlx import runtime
    from whisper_mlx.audio import load_audio
    from whisper_mlx.batched import transcribe_many
    from zoo.gates import word_errors
    from zoo.speech import load_specs, make_clips

    from benchmarks.cpu import whisper_mlx_dir

    device = runtime.set_device(args.device)
    model_dir = args.model or str(whisper_mlx_dir("tiny.en", "fp32", args.cache))
    model = whisper_mlx.load_model(model_dir)
    specs = load_specs()
    clips = make_clips(args.cache / "clips", [c for c in CLIPS if c in specs])
    chosen = [clips[CLIPS[i % len(CLIPS)]] for i in range(args.files)]
    paths = [str(c.path) for c in chosen]
    audio_s = sum(load_audio(path).size / 16000 for path in paths)

    texts: dict[str, list[str]] = {}

    def one_by_one() -> float:
        def run() -> None:
            texts["one by one"] = [whisper_mlx.transcribe(path, model=model)["text"] for path in paths]
        return timed(run)

    def many(name: str, batch: int, pack: bool):
        def runner() -> float:
            def run() -> None:
                out = sorted(transcribe_many(paths, model=model, batch_size=batch, pack=pack), key=lambda r: r[0])
                bad = [r for _, _, r in out if isinstance(r, Exception)]
                if bad:
                    raise RuntimeError(f"many-file run failed on an input: {bad[0]}")
                texts[name] = [r["text"] for _, _, r in out]
            return timed(run)
        return runner

    runners = {"one by one": one_by_one}
    for b in args.batch:
        for name, pack in [(f"many, batch {b}, packed", True), (f"many, batch {b}, pack=False", False)]:
            runners[name] = many(name, b, pack)
    times = interleave(runners, args.rounds, warmup=1)
    family = Path(model_dir).name
    rows = [make_row(family, f"{args.files} short files", name, t, audio_s=audio_s) for name, t in times.items()]
    base = rows[0].seconds
    result = {
        "date": date.today().isoformat(), "device": device, "model": family, "files": args.files,
        "audio_s": round(audio_s, 1), "rounds": args.rounds,
        "rows": [{"run": r.entry, "seconds": round(r.seconds, 3), "median_s": round(r.median_s, 3),
                  "times": [round(t, 3) for t in r.times], "throughput_vs_one_by_one": round(base / r.seconds, 3),
                  "wer_percent": round(100 * _wer(word_errors, [c.text for c in chosen], texts[r.entry]), 2)}
                 for r in rows],
        "machine": machine(),
        "command": "python -m benchmarks.many_files " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    table = render(result)
    print(table)
    if args.out is not None:
        write_atomic(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
        write_atomic(args.out.with_suffix(".md"), table)
    return 0


def _wer(word_errors, truths: list[str], hypotheses: list[str]) -> float:
    errors = words = 0
    for truth, hypothesis in zip(truths, hypotheses):
        e, n = word_errors(truth, hypothesis)
        errors, words = errors + e, words + n
    return errors / max(words, 1)


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Many short files at once: {r['model']} on {r['device']}, {r['files']} files ({r['audio_s']} s of audio)",
        "",
        f"Command: `{r['command']}` ({r['date']}, git {m.get('git')})",
        "",
        "| run | seconds (fastest of rounds) | median | throughput vs one by one | WER % |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['run']} | {row['seconds']} | {row['median_s']} | {row['throughput_vs_one_by_one']}x "
                     f"| {row['wer_percent']} |")
    lines += [
        "",
        f"{r['rounds']} interleaved rounds after one warm-up round; one process, the model loaded once. One by one: "
        "`transcribe(path)` per file (openai-whisper's defaults); many: `transcribe_many(paths, batch_size=B)` "
        "(its defaults: packed; and with pack=False).",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}; load average at end "
        f"{m['load_avg_at_end']}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
