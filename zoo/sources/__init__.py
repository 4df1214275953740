"""Weight sources: each turns one kind of published checkpoint into a `Checkpoint`.

One module per source kind; `load_source` dispatches on a manifest source's `kind`.
"""

from __future__ import annotations

from pathlib import Path

from . import ctranslate2, openai, pt, transformers
from .checkpoint import (
    DIM_FIELDS,
    Checkpoint,
    SourceError,
    combined_sha256,
    sha256_file,
    sinusoids,
    write_openai_checkpoint,
)

__all__ = [
    "DIM_FIELDS",
    "Checkpoint",
    "SourceError",
    "available_offline",
    "combined_sha256",
    "describe",
    "fingerprint",
    "load_for_family",
    "load_first_available",
    "load_source",
    "sha256_file",
    "sinusoids",
    "write_openai_checkpoint",
]


def load_source(source) -> Checkpoint:
    """Read one manifest source (zoo.manifest's OpenAISource, PtSource, ...)."""
    if source.kind == "openai":
        return openai.load(source.url, source.sha256)
    if source.kind == "pt":
        return pt.load(source.path, source.sha256)
    if source.kind == "ctranslate2":
        return ctranslate2.load(source.location, source.sha256)
    if source.kind == "transformers":
        return transformers.load(source.path, source.sha256)
    raise SourceError(f"unknown source kind {source.kind!r}")


def available_offline(source) -> bool:
    """True when the source can be read without the network (files present or cached)."""
    if source.kind == "openai":
        return openai.available(source.url, source.sha256)
    if source.kind == "ctranslate2":
        return ctranslate2.available(source.location)
    return Path(source.path).expanduser().exists()


def describe(source) -> str:
    """A short human name for a source (for messages and model cards)."""
    if source.kind == "openai":
        return source.url
    if source.kind == "ctranslate2":
        return "ctranslate2:" + "+".join(source.location)
    return f"{source.kind}:{source.path}"


def pick_source(family, offline_only: bool = False):
    """The family's sources to try, offline-readable ones first (manifest order within each)."""
    local = [s for s in family.sources if available_offline(s)]
    remote = [] if offline_only else [s for s in family.sources if s not in local]
    return local + remote


def load_for_family(source, family) -> Checkpoint:
    """Load a family's source; its dims must match the manifest's, whose alignment heads win."""
    ckpt = load_source(source)
    expected = family.dims.model_dump()
    if ckpt.dims != expected:
        bad = {k: (ckpt.dims.get(k), v) for k, v in expected.items() if ckpt.dims.get(k) != v}
        raise SourceError(f"{describe(source)}: dims differ from the manifest's (source, manifest): {bad}")
    ckpt.alignment_heads = [list(h) for h in family.alignment_heads]
    return ckpt


def fingerprint(source) -> str:
    """The source's sha256 as declared in the manifest, else computed from its files."""
    if source.kind == "openai":
        return source.sha256
    if source.kind == "pt":
        return source.sha256 or sha256_file(Path(source.path).expanduser())
    if source.kind == "ctranslate2":
        if source.sha256:
            return combined_sha256(source.sha256)
        parts, config = ctranslate2.locate(source.location)
        return combined_sha256({p.name: sha256_file(p) for p in parts + ([config] if config else [])})
    root = Path(source.path).expanduser()
    files = [root / "config.json", *sorted(root.glob("*.safetensors"))]
    return combined_sha256(source.sha256 or {p.name: sha256_file(p) for p in files if p.is_file()})


def load_first_available(family, offline_only: bool = False) -> Checkpoint:
    """Load the family's first source that works (offline-readable ones first)."""
    errors = []
    candidates = pick_source(family, offline_only)
    for source in candidates:
        try:
            return load_for_family(source, family)
        except SourceError as e:
            errors.append(str(e))
    if not candidates:
        errors = [f"{describe(s)}: not available offline" for s in family.sources]
    raise SourceError(f"{family.family}: no usable source: " + "; ".join(errors))
