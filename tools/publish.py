"""Publish built variants to the Hugging Face Hub: `tools/publish.py NAME... --build-dir DIR [--dry-run]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.manifest import ManifestError  # noqa: E402
from zoo.publish import publish_variants  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="variant names, e.g. tiny.en-4bit")
    parser.add_argument("--all", action="store_true", help="every variant in manifests/")
    parser.add_argument("--build-dir", type=Path, default=Path("build"), help="where tools/build.py wrote DIR/NAME/")
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
