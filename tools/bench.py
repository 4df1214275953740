"""Benchmark whisper_mlx against faster-whisper, openai-whisper and mlx-whisper (those installed).

  python -m tools.bench                                # tiny.en + base, both clips, greedy + beam 5
  python -m tools.bench --family tiny.en --clip clip30 --setup greedy --repeats 1   # a quick look
  python -m tools.bench --family tiny.en base --clip bench_long --setup greedy beam5 \\
      --systems whisper_mlx faster-whisper --variants fp32       # issue 13's rows, side by side
  python -m tools.bench --backend mlx cpu --systems whisper_mlx  # named decoding backends
  python -m tools.bench --check benchmarks/baseline.json         # CI: exit 1 if a ratio regressed
  python -m tools.bench --save-baseline benchmarks/baseline.json # record the CI check's rows
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path
    sys.exit("tools/bench.py: run it from the repository root as `python -m tools.bench`")

from benchmarks import core, cpu  # noqa: E402
from tools import ArgumentParser  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--family", nargs="+", default=["tiny.en", "base"], help="model families (manifests/)")
    p.add_argument("--clip", nargs="+", default=list(cpu.CLIPS), choices=list(cpu.CLIPS),
                   help="clip30: en_long_story cut to 30 s; bench_long: the 3+ minute clip")
    p.add_argument("--setup", nargs="+", default=["greedy", "beam5"], choices=list(cpu.SETUPS),
                   help="decoding setups: " + "; ".join(f"{s.name}: {s.about}" for s in cpu.SETUPS.values()))
    p.add_argument("--systems", nargs="+", choices=list(cpu.SYSTEMS), help="default: all installed")
    p.add_argument("--variants", nargs="+", default=list(cpu.VARIANTS), choices=list(cpu.VARIANTS),
                   help="whisper_mlx variants (peers always run fp32)")
    p.add_argument("--backend", nargs="+", choices=list(cpu.BACKENDS),
                   help="whisper_mlx decoding backends to measure, side by side (default: the one its rule picks)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved repetitions, a fresh process each (default 3; a baseline's own)")
    p.add_argument("--threads", type=int, default=2, help="threads for every system (BLAS, OpenMP, CT2)")
    p.add_argument("--cache", type=Path, default=core.DEFAULT_CACHE, help="models and clips cache")
    p.add_argument("--json", action="store_true", help="print the full result as JSON instead of a table")
    p.add_argument("--out", type=Path, help="also write the result: .json as JSON, else a markdown table")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", type=Path, metavar="BASELINE", help="measure what BASELINE's rows name; exit 1 "
                      "if a ratio exceeds value * (1 + tolerance)")
    mode.add_argument("--save-baseline", type=Path, metavar="PATH",
                      help="measure the CI check's rows (benchmarks.check.PLAN, or --rows-from's) and write a baseline")
    p.add_argument("--rows-from", type=Path, metavar="BASELINE", help="with --save-baseline: re-record this "
                   "baseline's rows (and its tolerance and max_wer unless given)")
    p.add_argument("--tolerance", type=float, default=None, help="with --save-baseline (default 0.15)")
    p.add_argument("--max-wer", type=float, default=None, help="with --save-baseline: whisper_mlx WER cap "
                   "(default 15)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-run progress on stderr")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.rows_from and not args.save_baseline:
        p.error("--rows-from needs --save-baseline")
    if (args.tolerance is not None or args.max_wer is not None) and not args.save_baseline:
        p.error("--tolerance and --max-wer go with --save-baseline (a check uses its baseline's)")
    for name in ("tolerance", "max_wer"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zoo.convert import ConvertError
    from zoo.manifest import ManifestError
    from zoo.sources import SourceError
    from zoo.speech import SpeechError

    from benchmarks import check

    command = "python -m tools.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    baseline = None
    try:
        if args.check or args.save_baseline:
            if args.check:
                baseline = check.load_baseline(args.check)
            elif args.rows_from:
                baseline = check.load_baseline(args.rows_from)
            else:
                baseline = check.plan_baseline(list(check.PLAN), tolerance=0.15, max_wer=15.0)
            result = check.measure(baseline, args.cache, args.repeats, log=log)
        else:
            systems = args.systems or cpu.installed_systems()
            entries = cpu.default_entries(systems, args.variants, args.backend)
            measures, skipped = cpu.plan(args.family, args.clip, args.setup, entries)
            result = cpu.run_bench(measures, args.repeats or 3, args.threads, args.cache, log=log, skipped=skipped)
        result["command"] = command
        print(json.dumps(result, indent=2) if args.json else cpu.format_table(result))
        if args.out:
            out_text = json.dumps(result, indent=2) if args.out.suffix == ".json" else (
                f"Command: `{command}`\n\n{cpu.format_table(result)}")
            core.write_atomic(args.out, out_text + "\n")
        if args.save_baseline:
            saved = check.baseline_from(result, baseline, command, args.tolerance, args.max_wer)
            core.write_atomic(args.save_baseline, json.dumps(saved, indent=2) + "\n")
            print(check.report(result, check.Baseline.model_validate(saved)), file=sys.stderr)
    except (core.BenchError, ConvertError, ManifestError, SourceError, SpeechError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.check:
        return 0
    print(check.report(result, baseline), file=sys.stderr)
    failed = check.failures(result, baseline)
    for line in failed:
        print(f"FAIL: {line}", file=sys.stderr)
    if not failed:
        print(f"bench check passed: {args.check}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
