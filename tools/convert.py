"""Convert a Whisper checkpoint into an MLX model directory (mlx-whisper's interface).

  python -m tools.convert --torch-name-or-path tiny.en --mlx-path mlx_models/tiny.en --dtype float32
  python -m tools.convert --torch-name-or-path distil-whisper/distil-small.en --revision COMMIT -q
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tools import ArgumentParser


def _digest(text: str) -> tuple[str, str]:
    name, sep, digest = text.partition("=")
    if not sep or not name or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise argparse.ArgumentTypeError(f"expected FILE=SHA256 (64 hex digits), got {text!r}")
    return name, digest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m tools.convert", description=__doc__.splitlines()[0])
    p.add_argument("--torch-name-or-path", "--torch_name_or_path", dest="torch_name_or_path", default="tiny",
                   help="a model family from manifests/ (e.g. tiny.en), a local OpenAI-format .pt, a local "
                        "transformers Whisper directory, or a Hub repo id (org/name) of one")
    p.add_argument("--revision", default=None,
                   help="the Hub repo's commit (or branch) to read (default: main); for a Hub repo id only")
    p.add_argument("--sha256", type=_digest, action="append", default=[], metavar="FILE=SHA256",
                   help="a transformers checkpoint file's expected sha256 (repeatable); a pickled one "
                        "(pytorch_model.bin) is read only when its digest is given")
    p.add_argument("--mlx-path", "--mlx_path", dest="mlx_path", default="mlx_models", help="output directory")
    p.add_argument("--dtype", choices=["float16", "float32", "bfloat16"], default="float16")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize the weights")
    p.add_argument("--q-bits", "--q_bits", dest="q_bits", type=int, default=4)
    p.add_argument("--q-group-size", "--q_group_size", dest="q_group_size", type=int, default=64)
    return p.parse_args(argv)


def kind_of(name: str) -> str:
    """What --torch-name-or-path names: "pt", "transformers" (a directory or a Hub repo id) or "family"."""
    from whisper_mlx.hub import is_repo_id

    path = Path(name).expanduser()
    if path.is_dir():
        return "transformers"
    if name.endswith(".pt") or path.is_file():
        return "pt"
    return "transformers" if is_repo_id(name) else "family"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zoo.convert import ConvertError, convert_pt, convert_size, convert_transformers
    from zoo.manifest import ManifestError
    from zoo.sources import SourceError

    q_bits = args.q_bits if args.quantize else None
    name, mlx_path = args.torch_name_or_path, Path(args.mlx_path)
    kind = kind_of(name)
    try:
        if kind != "transformers" and (args.revision or args.sha256):
            raise ConvertError(f"{'--revision' if args.revision else '--sha256'}: for a transformers checkpoint "
                               f"(a directory or a Hub repo id), not {name!r}")
        if kind == "pt":
            out = convert_pt(Path(name), mlx_path, args.dtype, q_bits, args.q_group_size)
        elif kind == "transformers":
            out = convert_transformers(name, mlx_path, args.dtype, q_bits, args.q_group_size,
                                       revision=args.revision, sha256=dict(args.sha256) or None)
        else:
            out = convert_size(name, mlx_path, args.dtype, q_bits, args.q_group_size)
    except (ConvertError, ManifestError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
