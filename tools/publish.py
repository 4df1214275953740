"""Publish built variants to the Hugging Face Hub: `python -m tools.publish NAME... --build-dir DIR [--dry-run]`."""

from __future__ import annotations

import sys
from pathlib import Path

from tools import ArgumentParser
from zoo.manifest import ManifestError
from zoo.publish import publish_variants


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m tools.publish", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="variant names, e.g. tiny.en-4bit")
    parser.add_argument("--all", action="store_true", help="every variant in manifests/")
    parser.add_argument("--build-dir", type=Path, default=Path("build"), help="where python -m tools.build wrote DIR/NAME/")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, file by file; upload nothing (without the Hub: the local plan and card)")
    parser.add_argument("--manifests", type=Path, default=None, help="manifests directory (default: manifests/)")
    parser.add_argument("--org", help="publish under this Hub org instead of the manifests' (or $WHISPER_MLX_ZOO_ORG)")
    parser.add_argument("--attempts", type=int, default=5, help="tries per variant on network failures")
    parser.add_argument("--retry-wait", type=float, default=2.0, help="seconds before the first retry (doubles)")
    args = parser.parse_args(argv)
    if bool(args.names) == args.all:
        parser.error("give variant NAMEs or --all (not both)")
    try:
        failures = publish_variants(args.names, args.build_dir, org=args.org, dry_run=args.dry_run,
                                    attempts=args.attempts, retry_wait=args.retry_wait,
                                    manifests_dir=args.manifests)
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
