"""The short-name registry (`tiny.en-4bit` -> Hub repo id) the runtime ships, generated from manifests/.

`python -m zoo.registry` rewrites whisper_mlx/assets/registry.json; `--check` only reports whether it
is in sync (non-zero exit if not). The runtime reads the JSON and never imports the zoo.
`--matrix` prints the families as a GitHub Actions matrix (one release job per family: its runner,
timeout and variants, from manifests/_defaults.yaml's `release`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .manifest import DEFAULTS_FILE, ManifestError, load_defaults, load_manifests, manifests_root, variants

# whisper_mlx.hub.REGISTRY_PATH, without importing the runtime (and mlx) to write a JSON file
REGISTRY_PATH = Path(__file__).resolve().parents[1] / "whisper_mlx" / "assets" / "registry.json"


def build_registry(manifests_dir: Path | None = None) -> dict:
    """{"models": {short name: repo id}} for every variant of every manifest."""
    models = {v.name: v.repo_id for v in variants(manifests_dir)}
    return {
        "generated_by": "python -m zoo.registry (from manifests/; do not edit)",
        "models": dict(sorted(models.items())),
    }


def release_matrix(manifests_dir: Path | None = None) -> dict:
    """{"include": [{family, runner, timeout_minutes, variants}, ...]}: one release job per family."""
    families = load_manifests(manifests_dir)
    release = load_defaults(manifests_root(manifests_dir) / DEFAULTS_FILE).release
    include = []
    for family in families:
        runner, timeout = release.for_family(family)
        include.append({"family": family.family, "runner": runner, "timeout_minutes": timeout,
                        "variants": " ".join(v.name for v in family.variants)})
    return {"include": include}


def render(registry: dict) -> str:
    """The registry as written to disk (stable, so a diff means the manifests changed)."""
    return json.dumps(registry, indent=2) + "\n"


def write_registry(path: Path = REGISTRY_PATH, manifests_dir: Path | None = None) -> Path:
    """Regenerate the registry file atomically (temp file beside it, then rename)."""
    text = render(build_registry(manifests_dir))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def in_sync(path: Path = REGISTRY_PATH, manifests_dir: Path | None = None) -> bool:
    """Whether the registry file is exactly what the manifests generate (ManifestError if they are invalid)."""
    expected = render(build_registry(manifests_dir))
    return path.is_file() and path.read_text() == expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.registry", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check that the registry is in sync")
    mode.add_argument("--matrix", action="store_true",
                      help="print the families as a GitHub Actions matrix (JSON, one line) and write nothing")
    parser.add_argument("--output", type=Path, default=REGISTRY_PATH, help="registry file to write or check")
    parser.add_argument("--manifests", type=Path, default=None, help="manifests directory (default: manifests/)")
    args = parser.parse_args(argv)
    try:
        if args.matrix:
            print(json.dumps(release_matrix(args.manifests), separators=(",", ":")))
            return 0
        if args.check:
            ok = in_sync(args.output, args.manifests)
            print(f"{args.output}: {'in sync' if ok else 'out of date; run `python -m zoo.registry`'}",
                  file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        path = write_registry(args.output, args.manifests)
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{path}: {len(build_registry(args.manifests)['models'])} short names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
