"""Load benchmark of `whisper-mlx serve`: N requests, M at a time, to a server on 127.0.0.1.

The same files go through `whisper_mlx.transcribe` in this process, one after another on one
loaded model, and the two are reported side by side: requests per minute and audio seconds per
second (throughput), and each request's latency through the server. Every server transcript is
checked against the in-process one (same model directory, same options), so a fast wrong
answer shows.

    .venv/bin/python -m benchmarks.server_load --requests 8 --concurrency 4 --rounds 2 --batch-size 4 \
        --out benchmarks/server-load-linux-cpu-2core-2026-11-30

`--batch-size B` adds a pass through `serve --batch-size B` (queued requests decoded together by
the batched decoder; its transcripts may differ slightly from the sequential loop's, so they are
counted, not required equal). Each round runs every pass over the same N files, the order
rotating between rounds, so load from elsewhere on the machine hits all of them.

Bounded: N requests per pass, at most M in flight, the server only on 127.0.0.1, every wait
capped. The model is tiny.en fp32 converted from the offline package (benchmarks.cpu's cache); the
clips are the English `parity` clips of zoo/clips.yaml (synthesized speech, 6-10 s each), used
in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import whisper_mlx
from whisper_mlx.audio import load_audio

from benchmarks.core import DEFAULT_CACHE, ROOT
from benchmarks.cpu import whisper_mlx_dir
from zoo.speech import load_specs, make_clips

CLIPS = ("en_weather", "en_train", "en_garden", "en_library", "en_recipe", "en_meeting", "en_river", "en_phone")
START_S = 120  # bound on the server coming up
REQUEST_S = 600  # bound on one request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(model_dir: Path, files: list[Path]) -> dict:
    """The files through transcribe, one after another, on one loaded model (after one warm-up)."""
    model = whisper_mlx.load_model(model_dir)
    whisper_mlx.transcribe(str(files[0]), model=model)
    texts, started = [], time.perf_counter()
    for path in files:
        texts.append(whisper_mlx.transcribe(str(path), model=model)["text"].strip())
    return {"wall_s": time.perf_counter() - started, "texts": texts}


def through_server(model_dir: Path, files: list[Path], concurrency: int, batch_size: int = 1) -> dict:
    """The files through `whisper-mlx serve --batch-size B` on 127.0.0.1, `concurrency` requests in flight."""
    import openai

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "whisper_mlx.cli", "serve", "--model", f"tiny.en={model_dir}",
                             "--host", "127.0.0.1", "--port", str(port), "--preload", "--log-level", "warning",
                             "--batch-size", str(batch_size)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=REQUEST_S)
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"whisper-mlx serve did not come up: {proc.stderr.read() if proc.poll() is not None else 'timeout'}")
                time.sleep(0.2)

        def ask(path: Path) -> tuple[str, float]:
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                text = client.audio.transcriptions.create(model="tiny.en", file=f).text
            return text, time.perf_counter() - t0

        ask(files[0])  # warm-up, as in process
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(ask, files))
        wall = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return {"wall_s": wall, "texts": [a[0] for a in answers], "latency_s": [a[1] for a in answers]}


def rates(n: int, audio_s: float, wall_s: float) -> dict:
    return {"wall_s": round(wall_s, 3), "requests_per_min": round(60 * n / wall_s, 2),
            "audio_s_per_s": round(audio_s / wall_s, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", "-n", type=int, default=8, help="requests per pass (N)")
    p.add_argument("--concurrency", "-m", type=int, default=4, help="requests in flight at once (M)")
    p.add_argument("--rounds", type=int, default=2, help="rounds; each runs every pass, the order rotating")
    p.add_argument("--batch-size", type=int, default=0,
                   help="also a pass through `serve --batch-size B` (batched decoding of queued requests; 0: none)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="where the converted model and the clips are made and reused (benchmarks.cpu's layout: "
                        "models/tiny.en-fp32, clips/)")
    p.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json (default: print the table only)")
    p.add_argument("--note", default="", help="a line for the results file (what else ran on the machine)")
    args = p.parse_args(argv)
    if not (1 <= args.requests <= 1000 and 1 <= args.concurrency <= 64 and 1 <= args.rounds <= 10
            and 0 <= args.batch_size <= 64):
        p.error("--requests must be 1-1000, --concurrency 1-64, --rounds 1-10, --batch-size 0-64")

    model_dir = whisper_mlx_dir("tiny.en", "fp32", args.cache)
    specs = load_specs()
    clips = make_clips(args.cache / "clips", [c for c in CLIPS if c in specs])
    files = [clips[c].path for c in CLIPS if c in clips]
    files = [files[i % len(files)] for i in range(args.requests)]
    audio_s = sum(load_audio(f).size / 16000 for f in files)

    passes = {"in_process": lambda: in_process(model_dir, files),
              "server": lambda: through_server(model_dir, files, args.concurrency)}
    if args.batch_size:
        passes["server_batched"] = lambda: through_server(model_dir, files, args.concurrency, args.batch_size)
    names = list(passes)
    load_before = os.getloadavg()
    walls = {name: 0.0 for name in names}
    latency = {name: [] for name in names if name != "in_process"}
    differing = {name: [] for name in latency}
    per_round = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotating, so load from elsewhere hits all
        runs = {name: passes[name]() for name in order}
        for name in names:
            walls[name] += runs[name]["wall_s"]
        for name in latency:
            latency[name] += runs[name]["latency_s"]
            differing[name] += [f.name for f, a, b in zip(files, runs["in_process"]["texts"], runs[name]["texts"])
                                if a != b]
        per_round.append({"order": order, **{name: rates(args.requests, audio_s, runs[name]["wall_s"]) for name in names}})
    load_after = os.getloadavg()

    n = args.requests * args.rounds
    result = {
        "date": date.today().isoformat(),
        "model": "tiny.en fp32",
        "requests_per_pass": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "audio_s_per_pass": round(audio_s, 2),
        "passes": {name: {**rates(n, audio_s * args.rounds, walls[name]),
                          "vs_in_process_throughput": round(walls["in_process"] / walls[name], 3),
                          **({"latency_s_median": round(statistics.median(latency[name]), 3),
                              "latency_s_max": round(max(latency[name]), 3),
                              "transcripts_differing_from_in_process": differing[name]} if name in latency else {})}
                   for name in names},
        "per_round": per_round,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in load_after]},
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip(),
        "command": f"benchmarks/server_load.py --requests {args.requests} --concurrency {args.concurrency} "
                   f"--rounds {args.rounds} --batch-size {args.batch_size}",
        "note": args.note,
    }
    table = render(result)
    print(table)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 1 if differing["server"] else 0  # batch 1 must answer as transcribe does


_LABELS = {
    "in_process": "transcribe, in process, one after another",
    "server": "whisper-mlx serve on 127.0.0.1, {m} in flight",
    "server_batched": "whisper-mlx serve --batch-size {b} on 127.0.0.1, {m} in flight",
}


def render(r: dict) -> str:
    m = r["machine"]
    n = r["requests_per_pass"] * r["rounds"]
    lines = [
        f"# whisper-mlx serve under load: {r['model']}, {r['requests_per_pass']} requests per pass, "
        f"{r['concurrency']} in flight, {r['rounds']} rounds",
        "",
        f"Command: `{r['command']}` (git {r['git']}, {r['date']})",
        "",
        "| path | requests | wall s | requests / min | audio s / s | vs in process | latency s (median / max) "
        "| transcripts differing from in process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r["passes"].items():
        label = _LABELS[name].format(m=r["concurrency"], b=r["batch_size"])
        lat = f"{row['latency_s_median']} / {row['latency_s_max']}" if "latency_s_median" in row else ""
        diff = str(len(row["transcripts_differing_from_in_process"])) if "latency_s_median" in row else ""
        lines.append(f"| {label} | {n} | {row['wall_s']} | {row['requests_per_min']} | {row['audio_s_per_s']} | "
                     f"{row['vs_in_process_throughput']}x | {lat} | {diff} |")
    lines += [
        "",
        "Per round (audio s / s, in the order run): " + "; ".join(
            ", ".join(f"{name} {x[name]['audio_s_per_s']}" for name in x["order"]) for x in r["per_round"]) + ".",
        f"{r['audio_s_per_pass']} s of audio per pass. `vs in process`: that pass's throughput / the in-process "
        "pass's, over all rounds.",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}; load average before "
        f"{m['load_avg_before']}, after {m['load_avg_after']}.",
    ]
    if r["note"]:
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
