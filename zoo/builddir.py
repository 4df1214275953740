"""A built variant directory (OUT/NAME/) and what "complete" means, written once: the build asks it
whether a variant is up to date, publish whether it may go up, and both get the same answer in the
same words (a refusal the build does not see would never be fixed by a rebuild).

Complete: exactly FILES (dot-files aside), checksums.json listing the sha256 of each of HASHED_FILES
and nothing else, every hash matching, and the inputs recorded at build time (variant name, repo id,
manifest digest, source, converter version) equal to the ones expected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HASHED_FILES = ("config.json", "weights.safetensors", "README.md", "eval.json")
FILES = HASHED_FILES + ("checksums.json",)  # the format's five files: exactly what is published


class IncompleteBuild(ValueError):
    """A directory that is not a complete, current build; the message names the file and the reason."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(record: Path, key: str, have, want) -> str:
    short = lambda x: f"{x[:16]}…" if isinstance(x, str) else repr(x)  # noqa: E731
    if key == "variant":
        return f"{record}: built as {have!r}, not {want!r} (the directory holds another variant)"
    if key == "repo_id":
        return f"{record}: built for {have}, the manifests now give {want}; rebuild"
    if key == "manifest_digest":
        return (f"{record}: built from another version of the manifest (digest {short(have)}, "
                f"the manifest now gives {short(want)}); rebuild")
    if key == "source_sha256":
        return f"{record}: built from source {short(have)}, the manifest's source is now {short(want)}; rebuild"
    return f"{record}: recorded {key} {have!r}, expected {want!r}; rebuild"


def check(variant_dir: Path, expected: dict | None = None) -> dict:
    """The checksums.json record of a complete build whose recorded inputs include `expected`
    (key by key); IncompleteBuild naming the first file at fault otherwise."""
    d = Path(variant_dir)
    if not d.is_dir():
        raise IncompleteBuild(f"{d}: not built (no such directory)")
    missing = [n for n in FILES if not (d / n).is_file()]
    if missing:
        raise IncompleteBuild(f"{d / missing[0]}: missing; the build is incomplete (missing: {', '.join(missing)})")
    extra = sorted(p.name for p in d.iterdir() if not p.name.startswith(".") and p.name not in FILES)
    if extra:
        raise IncompleteBuild(f"{d / extra[0]}: not a file of the build ({', '.join(FILES)}); a rebuild replaces the directory")
    record_path = d / "checksums.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise IncompleteBuild(f"{record_path}: not readable JSON ({e}); the build is incomplete") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        raise IncompleteBuild(f"{record_path}: field 'files' must map file names to sha256; the build is incomplete")
    listed_extra = sorted(set(files) - set(HASHED_FILES))
    if listed_extra:
        raise IncompleteBuild(f"{d / listed_extra[0]}: not a file of the build ({', '.join(FILES)}); a rebuild replaces the directory")
    for name in HASHED_FILES:
        want = files.get(name)
        want = want.get("sha256") if isinstance(want, dict) else want
        if want is None:
            raise IncompleteBuild(f"{d / name}: not listed in checksums.json; the build is stale")
        have = sha256_file(d / name)
        if have != want:
            raise IncompleteBuild(f"{d / name}: sha256 {have[:12]}… does not match checksums.json ({str(want)[:12]}…); the build is stale")
    inputs = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
    for key, want in (expected or {}).items():
        if inputs.get(key) != want:
            raise IncompleteBuild(_mismatch(record_path, key, inputs.get(key), want))
    return record


def why_not(variant_dir: Path, expected: dict | None = None) -> str | None:
    """None for a complete, current build; else the one line saying why it is not."""
    try:
        check(variant_dir, expected)
    except IncompleteBuild as e:
        return str(e)
    return None
