"""Build zoo variants (convert, gate, model card, checksums) into OUT/NAME/.

  python -m tools.build --list
  python -m tools.build tiny.en-fp16 tiny.en-4bit --out build
  python -m tools.build --family large-v3 --out build
  python -m tools.build --all --offline-only --out build
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools import ArgumentParser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m tools.build", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="variant names (see --list)")
    p.add_argument("--family", action="append", default=[], metavar="FAMILY",
                   help="every variant of this model family, e.g. tiny.en (repeatable; a release job builds one)")
    p.add_argument("--all", action="store_true", help="every variant of every manifest")
    p.add_argument("--list", action="store_true", help="print one variant per line, name first")
    p.add_argument("--out", type=Path, default=Path("build"), help="output directory (default: build)")
    p.add_argument("--offline-only", action="store_true", help="skip variants whose sources need the network")
    p.add_argument("--manifests", type=Path, default=None, help="manifests directory (default: manifests/)")
    p.add_argument("--clips-dir", type=Path, default=None, help="gate clip cache (default: ~/.cache/whisper-mlx/clips)")
    args = p.parse_args(argv)
    if not args.list and not args.all and not args.names and not args.family:
        p.error("name variants or --family, or give --all or --list")
    if args.all and (args.names or args.family):
        p.error("--all and variant or family names are exclusive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zoo import build
    from zoo.manifest import ManifestError

    try:
        if args.list:
            print("\n".join(build.listing(args.manifests)))
            return 0
        outcomes = build.build(
            None if args.all else args.names,
            args.out,
            families=args.family,
            offline_only=args.offline_only,
            manifests_dir=args.manifests,
            clips_dir=args.clips_dir,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(build.summary(outcomes))
    return build.exit_code(outcomes)


if __name__ == "__main__":
    sys.exit(main())
