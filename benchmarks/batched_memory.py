"""Peak memory of batched transcription on a long file (issue 14 point 5: a 1-hour file at batch 16
streams its audio and keeps at most a few batches of mel and features alive).

Every case is one fresh process (so its peak resident memory, VmHWM, is that case's alone) that
loads the model, then transcribes the file with `transcribe(..., batch_size=B)`:
- `path, VAD` / `path, 30 s windows`: the file's path (read in two streaming passes: memory does
  not grow with the file's length);
- `array, VAD`: the same file decoded first (`load_audio`) and given as an array, i.e. held whole,
  as a path input was before streaming: the contrast;
- `model only`: load the model, transcribe nothing (the floor under every row).
`short path, VAD` runs the 3.4 min `bench_long` clip the long file is made of: a peak that does
not grow from it to the long file is bounded memory.

The long file is copies of `bench_long` (benchmarks.cpu's cache; synthesized speech) joined by sox
and cut to --minutes, written to a temporary folder. Reported per case: peak RSS (MiB), its excess
over `model only`, MLX's own peak allocation (mx.get_peak_memory: mel windows, encoder features,
kv caches), wall seconds, and the file's float32 size for scale.

    .venv/bin/python -m benchmarks.batched_memory                    # 60 min, batch 16, every case
    .venv/bin/python -m benchmarks.batched_memory --minutes 5 --cases model path-vad   # a quick look
    .venv/bin/python -m benchmarks.batched_memory --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.core import DEFAULT_CACHE, ROOT, machine
from benchmarks.cpu import prepare_clip, whisper_mlx_dir

CASE_S = 3600  # bound on one case's process

# case -> (label, input: "long", "short" or None, vad_filter, give the input as an array)
CASES = {
    "model": ("model only", None, None, False),
    "path-vad": ("path, VAD", "long", True, False),
    "path-windows": ("path, 30 s windows", "long", False, False),
    "array-vad": ("array (held whole), VAD", "long", True, True),
    "short-vad": ("short path, VAD", "short", True, False),
}

# one case, run as its own process; prints one JSON line
_CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
import whisper_mlx
import mlx.core as mx
from benchmarks.core import peak_mb
model = whisper_mlx.load_model(args["model"])
loaded_mb = peak_mb()
out = {"loaded_mb": loaded_mb}
if args["input"] is not None:
    audio = args["input"]
    started = time.perf_counter()
    if args["array"]:
        from whisper_mlx.audio import load_audio
        audio = load_audio(audio)
    mx.reset_peak_memory()
    result = whisper_mlx.transcribe(audio, model=model, batch_size=args["batch_size"], vad_filter=args["vad"])
    out.update(wall_s=time.perf_counter() - started, mlx_peak_mb=mx.get_peak_memory() / 2**20,
               words=len(result["text"].split()), segments=len(result["segments"]))
out["peak_mb"] = peak_mb()
print(json.dumps(out))
"""


def long_file(clip: Path, minutes: float, folder: Path) -> Path:
    """Copies of `clip` joined and cut to `minutes` (16 kHz mono 16-bit WAV)."""
    seconds = minutes * 60
    with_sox = subprocess.run(["soxi", "-D", str(clip)], capture_output=True, text=True, check=True)
    copies = int(seconds // float(with_sox.stdout) + 1)
    out = folder / f"long-{minutes:g}min.wav"
    subprocess.run(["sox", *[str(clip)] * copies, str(out), "trim", "0", f"{seconds:g}"], check=True)
    return out


def run_case(case: str, model: str, inputs: dict[str, Path], batch_size: int) -> dict:
    label, which, vad, array = CASES[case]
    payload = json.dumps({"model": model, "input": str(inputs[which]) if which else None, "vad": vad,
                          "array": array, "batch_size": batch_size})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _CHILD, payload], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=CASE_S)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case!r} failed: {proc.stderr[-2000:]}")
    return {"case": case, "label": label, **json.loads(proc.stdout.strip().splitlines()[-1])}


def audio_mb(path: Path) -> float:
    """The file's samples as float32, in MiB (what holding it whole costs)."""
    import wave

    with wave.open(str(path)) as w:
        return 4 * w.getnframes() / 2**20


def table(rows: list[dict], inputs: dict[str, Path], batch_size: int) -> str:
    floor = next((r["peak_mb"] for r in rows if r["case"] == "model"), None)
    lines = [f"batch {batch_size}; long file {audio_mb(inputs['long']):.0f} MiB as float32, short "
             f"{audio_mb(inputs['short']):.0f} MiB",
             "",
             "| case | audio | peak RSS MiB | over model only | MLX peak MiB | wall s | words |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        which = CASES[r["case"]][1]
        minutes = f"{audio_mb(inputs[which]) * 2**20 / 4 / 16000 / 60:.1f} min" if which else ""
        over = f"{r['peak_mb'] - floor:.0f}" if floor is not None and which else ""
        mlx = f"{r['mlx_peak_mb']:.0f}" if "mlx_peak_mb" in r else ""
        wall = f"{r['wall_s']:.1f}" if "wall_s" in r else ""
        lines.append(f"| {r['label']} | {minutes} | {r['peak_mb']:.0f} | {over} | {mlx} | {wall} | {r.get('words', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="length of the long file (copies of bench_long)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--model", default=None, help="model directory (default: tiny.en fp32 from benchmarks.cpu's cache)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="benchmarks.cpu's cache (models/, clips/)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and the machine as JSON here")
    args = p.parse_args(argv)
    if not (0 < args.minutes <= 600 and 1 <= args.batch_size <= 256):
        p.error("--minutes: more than 0, at most 600; --batch-size: 1-256")

    model = str(Path(args.model).resolve()) if args.model else str(whisper_mlx_dir("tiny.en", "fp32", args.cache))
    short = prepare_clip("bench_long", args.cache).path
    with tempfile.TemporaryDirectory(prefix="batched-memory-") as tmp:
        inputs = {"short": short, "long": long_file(short, args.minutes, Path(tmp))}
        rows = []
        for case in args.cases:
            rows.append(run_case(case, model, inputs, args.batch_size))
            print(f"{case}: {rows[-1]}", file=sys.stderr, flush=True)
        print(table(rows, inputs, args.batch_size))
        if args.json:
            args.json.write_text(json.dumps({"minutes": args.minutes, "batch_size": args.batch_size, "model": model,
                                             "rows": rows, "machine": machine()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
