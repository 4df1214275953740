"""Throughput of `whisper-mlx corpus` (Ray Data) against the batched `transcribe` in one process.

The same files go through three (or more) passes, each in a fresh process, timed from its start
to its last row, so every pass pays what a user waits for:
- `in_process`: one Python process loads the model and runs `transcribe_many` (the batched
  decoder `transcribe(..., batch_size=B)` uses) over every file;
- `corpus_wN`: `whisper-mlx corpus` with N workers on a local Ray cluster of --cpus CPUs (the
  cluster's start, each worker's model load, Ray Data's scheduling and the Parquet writer
  included), into a fresh output directory.
Reported: audio hours transcribed per hour of wall time, and each corpus pass against the
in-process one: the overhead Ray adds on one machine, or what a second worker (or GPU) gains.
Every corpus row is checked against the in-process transcript (chunks of other files share a
batch in both, in different groups, so a rare difference in the last float bits can change a
token: differences are counted, not required zero).

    .venv/bin/python -m benchmarks.corpus_throughput --files 64 --long 4 --workers 1 2 --rounds 2 \
        --out benchmarks/corpus-linux-cpu-2core-DATE

On a machine with two GPUs (MLX's CUDA backend): `--device gpu --workers 1 2 --cpus 2`, each
worker asking for one GPU. Files: the English parity clips (6-10 s) in turn, plus --long copies
of the 3.4 min `bench_long` clip (each a different file name, as links); the model is tiny.en
fp32 (benchmarks.cpu's cache, converted from the offline package) unless --model names another.
Bounded: every pass has a timeout; the local clusters listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.core import DEFAULT_CACHE, ROOT
from benchmarks.cpu import prepare_clip, whisper_mlx_dir
from zoo.speech import load_specs, make_clips

CLIPS = ("en_weather", "en_train", "en_garden", "en_library", "en_recipe", "en_meeting", "en_river", "en_phone")
PASS_S = 3600  # bound on one pass

# the in-process pass, run as its own process; prints one JSON line
_IN_PROCESS = r"""
import json, sys, time
started = time.perf_counter()
import whisper_mlx
from whisper_mlx import runtime
from whisper_mlx.batched import transcribe_many
args = json.loads(sys.argv[1])
runtime.set_device(args["device"])
model = whisper_mlx.load_model(args["model"])
loaded = time.perf_counter()
texts, arrivals = {}, []
for _, path, result in transcribe_many(args["files"], model=model, **args["options"]):
    texts[path] = result["text"] if isinstance(result, dict) else f"error: {result}"
    if isinstance(result, dict):
        arrivals.append((time.perf_counter() - started, args["durations"][path]))
done = time.perf_counter()
print(json.dumps({"wall_s": done - started, "load_s": loaded - started, "texts": texts, "arrivals": arrivals}))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def in_process(model: str, files: list[str], options: dict, device: str, durations: dict) -> dict:
    payload = json.dumps({"model": model, "files": files, "options": options, "device": device,
                          "durations": durations})
    proc = subprocess.run([sys.executable, "-c", _IN_PROCESS, payload], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=PASS_S)
    if proc.returncode != 0:
        raise RuntimeError(f"in-process pass failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def corpus(model: str, inputs: Path, workers: int, flags: list[str]) -> dict:
    import pyarrow.parquet as pq

    from whisper_mlx.corpus import Output

    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as out, tempfile.TemporaryFile("w+") as err:
        rows_dir = Output(Path(out), "parquet", columns=["path", "duration"])
        arrivals = []  # (seconds since the start, audio seconds) of rows as the writer adds them
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "whisper_mlx.cli", "corpus", str(inputs), "--output", out,
                                 "--model", model, "--workers", str(workers), *flags],
                                cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            while proc.poll() is None:
                if time.perf_counter() - started > PASS_S:
                    raise RuntimeError(f"corpus pass (--workers {workers}) took over {PASS_S} s")
                new, _ = rows_dir.new_rows()
                if new:
                    arrivals.append((time.perf_counter() - started, sum(r["duration"] or 0.0 for r in new)))
                time.sleep(0.25)  # polling the output directory, as the corpus command's own progress does
        finally:
            if proc.poll() is None:
                proc.kill()
        wall = time.perf_counter() - started
        new, _ = rows_dir.new_rows(final=True)
        if new:
            arrivals.append((wall, sum(r["duration"] or 0.0 for r in new)))
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"corpus pass (--workers {workers}) failed: {err.read()[-2000:]}")
        rows = [r for f in sorted(Path(out).glob("*.parquet")) for r in pq.read_table(f, columns=["path", "text"]).to_pylist()]
    return {"wall_s": wall, "texts": {r["path"]: r["text"] for r in rows}, "arrivals": arrivals}


def steady_rate(arrivals: list) -> float | None:
    """Audio hours per hour from the first rows to the last: the audio of every row after the first
    arrival over the time between the first and the last arrival (the start, model loads and a
    local cluster's start left out: what a long corpus approaches). None with fewer than 2 arrivals."""
    if len(arrivals) < 2 or arrivals[-1][0] <= arrivals[0][0]:
        return None
    return sum(a for _, a in arrivals[1:]) / (arrivals[-1][0] - arrivals[0][0])


def _tasks(files_per_task: int | None) -> str:
    if files_per_task is None:
        return "corpus tasks cut by audio duration"
    return f"{files_per_task} files per corpus task"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=64, help="short clips (6-10 s each, the English parity clips in turn)")
    p.add_argument("--long", type=int, default=4, help="copies of the 3.4 min bench_long clip")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="corpus passes with these worker counts")
    p.add_argument("--rounds", type=int, default=2, help="rounds; each runs every pass, the order rotating")
    p.add_argument("--batch-size", type=int, default=8, help="decoder batch (30 s chunks) in every pass")
    p.add_argument("--files-per-task", type=int, default=None,
                   help="corpus: files handed to a worker at once (default: the command's tasks by audio duration)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="the local Ray cluster's CPUs")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="gpu: MLX on the GPU, one GPU per corpus worker")
    p.add_argument("--model", default=None, help="model directory (default: tiny.en fp32 from benchmarks.cpu's cache)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="benchmarks.cpu's cache (models/, clips/)")
    p.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json (default: print the table only)")
    p.add_argument("--no-in-process", action="store_true",
                   help="only the corpus passes (a corpus too long to also run in one process within the time)")
    p.add_argument("--note", default="", help="a line for the results file (what else ran on the machine)")
    args = p.parse_args(argv)
    if not (0 <= args.files <= 10000 and 0 <= args.long <= 1000 and args.files + args.long >= 1
            and 1 <= args.rounds <= 10 and all(1 <= w <= 64 for w in args.workers)):
        p.error("--files 0-10000, --long 0-1000 (at least one file), --rounds 1-10, --workers 1-64")

    model = str(Path(args.model).resolve()) if args.model else str(whisper_mlx_dir("tiny.en", "fp32", args.cache))
    specs = load_specs()
    clips = make_clips(args.cache / "clips", [c for c in CLIPS if c in specs])
    short = [clips[c].path for c in CLIPS if c in clips]
    long_clip = prepare_clip("bench_long", args.cache).path if args.long else None
    from whisper_mlx.audio import load_audio

    with tempfile.TemporaryDirectory(prefix="corpus-bench-in-") as tmp:
        inputs = Path(tmp)
        for i in range(args.files):
            (inputs / f"short{i:05d}.wav").symlink_to(short[i % len(short)])
        for i in range(args.long):
            (inputs / f"long{i:03d}.wav").symlink_to(long_clip)
        files = sorted(str(f) for f in inputs.iterdir())
        seconds: dict[str, float] = {}  # per linked clip: the files are links to a few clips
        for f in files:
            clip = os.path.realpath(f)
            if clip not in seconds:
                seconds[clip] = load_audio(clip).size / 16000
        durations = {f: seconds[os.path.realpath(f)] for f in files}
        audio_s = sum(durations.values())
        options = dict(batch_size=args.batch_size, beam_size=None, best_of=5, vad_filter=False)
        flags = ["--batch-size", str(args.batch_size), "--cpus", str(args.cpus), "--device", args.device,
                 "--beam-size", "None", "--vad-filter", "False"]
        if args.files_per_task is not None:
            flags += ["--files-per-task", str(args.files_per_task)]
        passes = {} if args.no_in_process else {
            "in_process": lambda: in_process(model, files, options, args.device, durations)}
        for w in args.workers:
            passes[f"corpus_w{w}"] = lambda w=w: corpus(model, inputs, w, flags)
        names = list(passes)
        load_before = os.getloadavg()
        walls = {name: 0.0 for name in names}
        differing = {name: set() for name in names if name != "in_process" and "in_process" in names}
        steady: dict[str, list] = {name: [] for name in names}
        per_round = []
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]  # rotating, so load from elsewhere hits all
            runs = {name: passes[name]() for name in order}
            for name in names:
                walls[name] += runs[name]["wall_s"]
            for name in differing:
                differing[name] |= {Path(f).name for f in files if runs[name]["texts"].get(f) != runs["in_process"]["texts"][f]}
            for name in names:
                steady[name].append(steady_rate(runs[name]["arrivals"]))
            per_round.append({"order": order, **{name: round(audio_s / runs[name]["wall_s"], 2) for name in names},
                              "in_process_load_s": round(runs["in_process"]["load_s"], 2) if "in_process" in runs else None,
                              "first_rows_s": {name: round(runs[name]["arrivals"][0][0], 2) if runs[name]["arrivals"]
                                               else None for name in names},
                              # (seconds since the pass started, audio seconds of the rows that appeared)
                              "arrivals": {name: [[round(t, 2), round(a, 1)] for t, a in runs[name]["arrivals"]]
                                           for name in names}})
        load_after = os.getloadavg()

    result = {
        "date": date.today().isoformat(),
        "model": Path(model).name,
        "device": args.device,
        "files": {"short": args.files, "long": args.long, "audio_h": round(audio_s / 3600, 4)},
        "batch_size": args.batch_size,
        "files_per_task": args.files_per_task,
        "cpus": args.cpus,
        "rounds": args.rounds,
        "passes": {name: {"wall_s": round(walls[name], 2),
                          "audio_h_per_h": round(audio_s * args.rounds / walls[name], 2),
                          "vs_in_process": round(walls["in_process"] / walls[name], 3) if "in_process" in walls else None,
                          "steady_audio_h_per_h": _mean(steady[name]),
                          **({"files_differing_from_in_process": sorted(differing[name])} if name in differing else {})}
                   for name in names},
        "per_round_audio_h_per_h": per_round,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in load_after]},
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip(),
        "command": "python -m benchmarks.corpus_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "note": args.note,
    }
    table = render(result)
    print(table)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 2) if values else None


def render(r: dict) -> str:
    m, f = r["machine"], r["files"]
    lines = [
        f"# whisper-mlx corpus throughput: {r['model']} on {r['device']}, {f['short']} short + {f['long']} long files "
        f"({f['audio_h']} h of audio), {r['rounds']} rounds",
        "",
        f"Command: `{r['command']}` (git {r['git']}, {r['date']})",
        "",
        "| pass | wall s (all rounds) | audio h / h | vs in process | steady audio h / h | files differing from in process |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in r["passes"].items():
        label = ("transcribe_many in one process (the batched transcribe)" if name == "in_process"
                 else f"whisper-mlx corpus, {name.removeprefix('corpus_w')} worker(s), local cluster of {r['cpus']} CPUs")
        diff = str(len(row["files_differing_from_in_process"])) if "files_differing_from_in_process" in row else ""
        vs = f"{row['vs_in_process']}x" if row["vs_in_process"] is not None else ""
        lines.append(f"| {label} | {row['wall_s']} | {row['audio_h_per_h']} | {vs} | "
                     f"{row.get('steady_audio_h_per_h')} | {diff} |")
    lines += [
        "",
        "Per round (audio h / h, in the order run): " + "; ".join(
            ", ".join(f"{name} {x[name]}" for name in x["order"]) for x in r["per_round_audio_h_per_h"]) + ".",
        f"Every pass is a fresh process timed from its start to its last row: the corpus passes include the "
        f"local Ray cluster's start and each worker's model load, the in-process pass its one model load. Decoder "
        f"batch {r['batch_size']}, {_tasks(r['files_per_task'])}, greedy with temperature fallback, "
        "no VAD. Steady: from the first rows to the last (the audio of every row after the first arrival over "
        "the time between the first and the last arrival): the start, the model loads and the local cluster's "
        "start left out, which a long corpus approaches.",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}; load average before "
        f"{m['load_avg_before']}, after {m['load_avg_after']}.",
    ]
    if r["note"]:
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
