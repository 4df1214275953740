"""Benchmark whisper_mlx (MLX CUDA) against openai-whisper (PyTorch CUDA) side by side, fp16.

  python -m tools.bench_gpu --shapes large-v3 large-v3-turbo --real tiny.en=DIR,PT base=DIR,PT \\
      --clips CLIPS_DIR --beam 5 --out benchmarks/gpu-h200.json
  python -m tools.bench_gpu --device cpu --shapes tiny --tokens 5 --no-torch --out /tmp/x.json   # a check on the CPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path
    sys.exit("tools/bench_gpu.py: run it from the repository root as `python -m tools.bench_gpu`")

from benchmarks import core, gpu  # noqa: E402
from tools import ArgumentParser  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, ArgumentParser]:
    p = ArgumentParser(prog="python -m tools.bench_gpu", description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", choices=["cpu", "gpu"], default=None, help="MLX device (default: the GPU)")
    p.add_argument("--shapes", nargs="*", default=["large-v3", "large-v3-turbo"], choices=gpu.shape_names(),
                   metavar="FAMILY", help="families run with random weights at their manifest's dims")
    p.add_argument("--tokens", type=int, default=100, help="fixed decode length for --shapes")
    p.add_argument("--real", nargs="*", default=[], metavar="FAMILY=MODEL_DIR,PT",
                   help="real-weight end-to-end runs: whisper_mlx fp16 dir and the openai .pt")
    p.add_argument("--clips", type=Path, help="folder of 16 kHz WAV clips (en_*.wav) for --real")
    p.add_argument("--beam", type=int, nargs="*", default=[], metavar="N",
                   help="also transcribe the --real clips with beam search of N beams")
    p.add_argument("--no-torch", action="store_true", help="whisper_mlx only")
    p.add_argument("--out", type=Path, help="write the results as JSON here and a Markdown table beside it")
    args = p.parse_args(argv)
    if args.tokens < 2:
        p.error("--tokens must be at least 2 (the step is (time for N tokens - time for 1) / (N - 1))")
    if any(n < 1 for n in args.beam):
        p.error("--beam takes beam counts of at least 1")
    for spec in args.real:
        family, _, paths = spec.partition("=")
        if not family or paths.count(",") != 1 or "" in paths.split(","):
            p.error(f"--real {spec!r}: expected FAMILY=MODEL_DIR,PT")
        model_dir, pt = map(Path, paths.split(","))
        if not model_dir.is_dir():
            p.error(f"--real {spec!r}: {model_dir} is not a model directory")
        if not args.no_torch and not pt.is_file():
            p.error(f"--real {spec!r}: no openai-whisper checkpoint at {pt}")
    if args.real and (not args.clips or not args.clips.is_dir()):
        p.error("--real needs --clips DIR")
    return args, p


def main(argv: list[str] | None = None) -> int:
    args, p = parse_args(argv)

    from whisper_mlx import runtime

    try:
        device = runtime.set_device(args.device)
    except RuntimeError as e:
        p.error(f"--device {args.device}: {e}")
    with_torch = not args.no_torch
    if with_torch and device != "gpu":
        p.error(f"openai-whisper's side runs on PyTorch CUDA, and MLX runs on the {device}: add --no-torch")
    wavs = sorted(args.clips.glob("en_*.wav")) if args.real else []
    if args.real and not wavs:
        p.error(f"--clips {args.clips}: no en_*.wav clips there")

    report = gpu.Report(device=device, facts=runtime.report())
    bw = gpu.mlx_copy_bandwidth()
    report.facts["mlx_copy_GBps"] = round(bw)
    if with_torch:
        report.facts["torch_copy_GBps"] = round(gpu.torch_copy_bandwidth())
    print(json.dumps(report.facts), flush=True)

    for name in args.shapes:
        gpu.bench_shape(report, name, gpu.shape(name), n_tokens=args.tokens, with_torch=with_torch, bandwidth=bw)

    if args.real:
        audio = [gpu.load_wav(w) for w in wavs]
        for spec in args.real:
            family, _, paths = spec.partition("=")
            model_dir, _, pt = paths.partition(",")
            for words in (False, True):
                gpu.bench_transcribe(report, family, Path(model_dir), Path(pt), audio,
                                     word_timestamps=words, with_torch=with_torch)
            for beam in args.beam:
                gpu.bench_transcribe(report, family, Path(model_dir), Path(pt), audio,
                                     with_torch=with_torch, beam_size=beam)

    table = gpu.table(report)
    print("\n" + table)
    if args.out:
        core.write_atomic(args.out, json.dumps(report.as_dict(), indent=2) + "\n")
        core.write_atomic(args.out.with_suffix(".md"), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
