"""Load benchmark of `whisper-mlx serve`: N requests, M at a time, to a server on 127.0.0.1.

The same files go through `whisper_mlx.transcribe` in this process, one after another on one
loaded model, and the two are reported side by side: requests per minute and audio seconds per
second (throughput), and each request's latency through the server. Every server transcript is
checked against the in-process one (same model directory, same options), so a fast wrong
answer shows.

    .venv/bin/python benchmarks/server_load.py --requests 8 --concurrency 4 --rounds 2 \
        --out benchmarks/server-load-linux-cpu-2core-2026-11-30

Each round runs both passes over the same N files, the order alternating between rounds, so load
from elsewhere on the machine hits both. Bounded: N requests per pass, at most M in flight, the
server only on 127.0.0.1, every wait capped. The model is tiny.en fp32 converted from the offline package (zoo.bench's cache); the clips are
the English `parity` clips of zoo/clips.yaml (synthesized speech, 6-10 s each), used in turn.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import whisper_mlx  # noqa: E402
from whisper_mlx.audio import load_audio  # noqa: E402
from zoo.bench import DEFAULT_CACHE, whisper_mlx_dir  # noqa: E402
from zoo.speech import load_specs, make_clips  # noqa: E402

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


def through_server(model_dir: Path, files: list[Path], concurrency: int) -> dict:
    """The files through `whisper-mlx serve` on 127.0.0.1, `concurrency` requests in flight."""
    import openai

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "whisper_mlx.cli", "serve", "--model", f"tiny.en={model_dir}",
                             "--host", "127.0.0.1", "--port", str(port), "--preload", "--log-level", "warning"],
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
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds; each runs the in-process pass and the server pass, in alternating order")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="where the converted model and the clips are made and reused (zoo.bench's layout: "
                        "models/tiny.en-fp32, clips/)")
    p.add_argument("--out", type=Path, default=None,
                   help="write OUT.md and OUT.json (default: print the table only)")
    p.add_argument("--note", default="", help="a line for the results file (what else ran on the machine)")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 1000 or not 1 <= args.concurrency <= 64 or not 1 <= args.rounds <= 10:
        p.error("--requests must be 1-1000, --concurrency 1-64, --rounds 1-10")

    model_dir = whisper_mlx_dir("tiny.en", "fp32", args.cache)
    specs = load_specs()
    clips = make_clips(args.cache / "clips", [c for c in CLIPS if c in specs])
    files = [clips[c].path for c in CLIPS if c in clips]
    files = [files[i % len(files)] for i in range(args.requests)]
    audio_s = sum(load_audio(f).size / 16000 for f in files)

    load_before = os.getloadavg()
    rounds, latency, mismatches = [], [], []
    for r in range(args.rounds):
        order = ("in_process", "server") if r % 2 == 0 else ("server", "in_process")
        runs = {}
        for path_kind in order:  # alternating, so a burst of load from elsewhere hits both
            runs[path_kind] = (in_process(model_dir, files) if path_kind == "in_process"
                               else through_server(model_dir, files, args.concurrency))
        latency += runs["server"]["latency_s"]
        mismatches += [f.name for f, a, b in zip(files, runs["in_process"]["texts"], runs["server"]["texts"]) if a != b]
        rounds.append({
            "order": list(order),
            "in_process": rates(args.requests, audio_s, runs["in_process"]["wall_s"]),
            "server": rates(args.requests, audio_s, runs["server"]["wall_s"]),
            "server_vs_in_process_throughput": round(runs["in_process"]["wall_s"] / runs["server"]["wall_s"], 3),
        })
    load_after = os.getloadavg()

    n = args.requests * args.rounds
    local_s = sum(r["in_process"]["wall_s"] for r in rounds)
    served_s = sum(r["server"]["wall_s"] for r in rounds)
    latency.sort()
    result = {
        "date": date.today().isoformat(),
        "model": "tiny.en fp32",
        "requests_per_pass": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "audio_s_per_pass": round(audio_s, 2),
        "in_process": rates(n, audio_s * args.rounds, local_s),
        "server": {**rates(n, audio_s * args.rounds, served_s),
                   "latency_s_median": round(statistics.median(latency), 3),
                   "latency_s_max": round(latency[-1], 3)},
        "server_vs_in_process_throughput": round(local_s / served_s, 3),
        "per_round": rounds,
        "transcripts_differing": mismatches,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in load_after]},
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip(),
        "command": f"benchmarks/server_load.py --requests {args.requests} --concurrency {args.concurrency} "
                   f"--rounds {args.rounds}",
        "note": args.note,
    }
    table = render(result)
    print(table)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 1 if mismatches else 0


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# whisper-mlx serve under load: {r['model']}, {r['requests_per_pass']} requests per pass, "
        f"{r['concurrency']} in flight, {r['rounds']} rounds",
        "",
        f"Command: `{r['command']}` (git {r['git']}, {r['date']})",
        "",
        "| path | requests | wall s | requests / min | audio s / s | latency s (median / max) |",
        "|---|---|---|---|---|---|",
        f"| transcribe, in process, one after another | {r['requests_per_pass'] * r['rounds']} | "
        f"{r['in_process']['wall_s']} | {r['in_process']['requests_per_min']} | {r['in_process']['audio_s_per_s']} | |",
        f"| whisper-mlx serve on 127.0.0.1, {r['concurrency']} in flight | {r['requests_per_pass'] * r['rounds']} | "
        f"{r['server']['wall_s']} | {r['server']['requests_per_min']} | {r['server']['audio_s_per_s']} | "
        f"{r['server']['latency_s_median']} / {r['server']['latency_s_max']} |",
        "",
        f"Server throughput / in-process throughput: **{r['server_vs_in_process_throughput']}x** "
        f"(per round, in the order run: "
        + ", ".join(f"{x['server_vs_in_process_throughput']}x ({' then '.join(x['order'])})" for x in r["per_round"])
        + f"). {r['audio_s_per_pass']} s of audio per pass; server transcripts differing from in-process: "
        f"{len(r['transcripts_differing'])}.",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}; load average before "
        f"{m['load_avg_before']}, after {m['load_avg_after']}.",
    ]
    if r["note"]:
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
