"""Benchmark whisper_mlx (MLX CUDA) against openai-whisper (PyTorch CUDA) side by side, fp16.

  python tools/bench_gpu.py --shapes large-v3 large-v3-turbo --real tiny.en=DIR,PT base=DIR,PT \
      --clips CLIPS_DIR --beam 5 --out benchmarks/gpu-h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo import bench_gpu  # noqa: E402
from zoo.manifest import find_family  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default=None, help="MLX device (default: the GPU)")
    p.add_argument("--shapes", nargs="*", default=["large-v3", "large-v3-turbo"], help="families run with random weights")
    p.add_argument("--tokens", type=int, default=100, help="fixed decode length for --shapes")
    p.add_argument("--real", nargs="*", default=[], metavar="FAMILY=MODEL_DIR,PT",
                   help="real-weight end-to-end runs: whisper_mlx fp16 dir and the openai .pt")
    p.add_argument("--clips", type=Path, help="folder of 16 kHz WAV clips for --real")
    p.add_argument("--beam", type=int, nargs="*", default=[], metavar="N",
                   help="also transcribe the --real clips with beam search of N beams")
    p.add_argument("--no-torch", action="store_true", help="whisper_mlx only")
    p.add_argument("--out", type=Path, help="write the results as JSON here and a Markdown table beside it")
    args = p.parse_args(argv)

    from whisper_mlx import runtime
    from whisper_mlx.model import ModelDimensions

    device = runtime.set_device(args.device)
    report = bench_gpu.Report(device=device, facts=runtime.report())
    with_torch = not args.no_torch
    bw = bench_gpu.mlx_copy_bandwidth()
    report.facts["mlx_copy_GBps"] = round(bw)
    if with_torch:
        report.facts["torch_copy_GBps"] = round(bench_gpu.torch_copy_bandwidth())
    print(json.dumps(report.facts), flush=True)

    for name in args.shapes:
        dims = ModelDimensions(**find_family(name).dims.model_dump())
        bench_gpu.bench_shape(report, name, dims, n_tokens=args.tokens, with_torch=with_torch, bandwidth=bw)

    if args.real:
        if not args.clips or not args.clips.is_dir():
            p.error("--real needs --clips DIR")
        wavs = sorted(args.clips.glob("en_*.wav"))
        audio = [bench_gpu.load_wav(w) for w in wavs]
        for spec in args.real:
            family, _, paths = spec.partition("=")
            model_dir, _, pt = paths.partition(",")
            for words in (False, True):
                bench_gpu.bench_transcribe(report, family, Path(model_dir), Path(pt), audio,
                                           word_timestamps=words, with_torch=with_torch)
            for beam in args.beam:
                bench_gpu.bench_transcribe(report, family, Path(model_dir), Path(pt), audio,
                                           with_torch=with_torch, beam_size=beam)

    table = bench_gpu.table(report)
    print("\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
