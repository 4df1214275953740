"""Convert an OpenAI Whisper checkpoint into an MLX model directory (mlx-whisper's interface).

  python -m tools.convert --torch-name-or-path tiny.en --mlx-path mlx_models/tiny.en --dtype float32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools import ArgumentParser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m tools.convert", description=__doc__.splitlines()[0])
    p.add_argument("--torch-name-or-path", "--torch_name_or_path", dest="torch_name_or_path", default="tiny",
                   help="a model family from manifests/ (e.g. tiny.en) or a local OpenAI-format .pt")
    p.add_argument("--mlx-path", "--mlx_path", dest="mlx_path", default="mlx_models", help="output directory")
    p.add_argument("--dtype", choices=["float16", "float32", "bfloat16"], default="float16")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize the weights")
    p.add_argument("--q-bits", "--q_bits", dest="q_bits", type=int, default=4)
    p.add_argument("--q-group-size", "--q_group_size", dest="q_group_size", type=int, default=64)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zoo.convert import ConvertError, convert_pt, convert_size
    from zoo.manifest import ManifestError
    from zoo.sources import SourceError

    q_bits = args.q_bits if args.quantize else None
    try:
        if args.torch_name_or_path.endswith(".pt") or Path(args.torch_name_or_path).is_file():
            out = convert_pt(Path(args.torch_name_or_path), Path(args.mlx_path), args.dtype, q_bits, args.q_group_size)
        else:
            out = convert_size(args.torch_name_or_path, Path(args.mlx_path), args.dtype, q_bits, args.q_group_size)
    except (ConvertError, ManifestError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
