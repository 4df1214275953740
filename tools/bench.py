#!/usr/bin/env python
"""Benchmark whisper_mlx against faster-whisper, openai-whisper and mlx-whisper (those installed).

  tools/bench.py                                   # tiny.en + base, 30 s + 3.4 min clips, table
  tools/bench.py --family tiny.en --clip clip30 --repeats 5 --json
  tools/bench.py --check benchmarks/baseline.json  # CI: exit 1 if a same-run ratio regressed
  tools/bench.py --family tiny.en --clip clip30 --systems whisper_mlx faster-whisper \\
      --variants fp32 --save-baseline benchmarks/baseline.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo import bench  # noqa: E402  (stdlib-only at import; heavy imports happen per step)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--family", nargs="+", default=["tiny.en", "base"], help="model families (manifests/)")
    p.add_argument("--clip", nargs="+", default=list(bench.CLIPS), choices=list(bench.CLIPS),
                   help="clip30: en_long_story cut to 30 s; bench_long: the 3+ minute clip")
    p.add_argument("--systems", nargs="+", choices=list(bench.SYSTEMS), help="default: all installed")
    p.add_argument("--variants", nargs="+", default=list(bench.VARIANTS), choices=list(bench.VARIANTS),
                   help="whisper_mlx variants (peers always run fp32)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repetitions (default 3)")
    p.add_argument("--threads", type=int, default=2, help="threads for every system (BLAS, OpenMP, CT2)")
    p.add_argument("--cache", type=Path, default=bench.DEFAULT_CACHE, help="models and clips cache")
    p.add_argument("--json", action="store_true", help="print the full result as JSON instead of a table")
    p.add_argument("--out", type=Path, help="also write the result: .json as JSON, else a markdown table")
    p.add_argument("--check", type=Path, metavar="BASELINE", help="measure what BASELINE names; exit 1 "
                   "if a ratio exceeds baseline * (1 + tolerance)")
    p.add_argument("--save-baseline", type=Path, metavar="PATH", help="write a baseline from this run")
    p.add_argument("--ratio", nargs="+", default=["whisper_mlx:fp32/faster-whisper:fp32"],
                   help="ratios saved by --save-baseline")
    p.add_argument("--tolerance", type=float, default=0.25, help="tolerance saved by --save-baseline")
    p.add_argument("--max-wer", type=float, default=None, help="whisper_mlx WER cap saved by --save-baseline")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-run progress on stderr")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zoo.convert import ConvertError
    from zoo.manifest import ManifestError
    from zoo.sources import SourceError
    from zoo.speech import SpeechError

    command = "tools/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        if args.check:
            baseline = bench.load_baseline(args.check)
            result, failures = bench.run_check(baseline, args.cache, args.repeats, log=log)
        else:
            systems = args.systems or bench.installed_systems()
            entries = bench.default_entries(systems, args.variants)
            result = bench.run_bench(args.family, args.clip, entries, args.repeats or 3, args.threads,
                                     args.cache, log=log)
            failures = []
        result["command"] = command
        text = json.dumps(result, indent=2) if args.json else bench.format_table(result)
        print(text)
        if args.out:
            out_text = json.dumps(result, indent=2) if args.out.suffix == ".json" else (
                f"Command: `{command}`\n\n{bench.format_table(result)}")
            bench.write_atomic(args.out, out_text + "\n")
        if args.save_baseline:
            saved = bench.baseline_from(result, args.ratio, args.tolerance, command, args.max_wer)
            bench.write_atomic(args.save_baseline, json.dumps(saved, indent=2) + "\n")
    except (bench.BenchError, ConvertError, ManifestError, SourceError, SpeechError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if args.check and not failures:
        print(f"bench check passed: {args.check}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
