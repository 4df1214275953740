"""Weight sources: each turns one kind of published checkpoint into a `Checkpoint`.

One module per source kind; `load_source` dispatches on a manifest source's `kind`. A transformers
source on the Hub is read against a `Pin` (commit and digests): the manifest's, else the record an
earlier build left in the output (`recorded_pin`), else nothing (the build records what it read).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import ctranslate2, openai, pt, transformers
from .checkpoint import (
    DIM_FIELDS,
    HEADS_DEFAULT,
    Checkpoint,
    SourceError,
    alignment_heads_problem,
    combined_sha256,
    default_alignment_heads,
    sha256_file,
    sinusoids,
    write_openai_checkpoint,
)
from .transformers import Pin

__all__ = [
    "DIM_FIELDS",
    "HEADS_DEFAULT",
    "Checkpoint",
    "Pin",
    "SourceError",
    "available_offline",
    "combined_sha256",
    "describe",
    "fingerprint",
    "load_for_family",
    "load_first_available",
    "load_source",
    "manifest_pin",
    "recorded_pin",
    "settle_alignment_heads",
    "sha256_file",
    "sinusoids",
    "write_openai_checkpoint",
]

UNPINNED = "unpinned"


def _is_hub(source) -> bool:
    return source.kind == "transformers" and source.repo is not None


def manifest_pin(source) -> Pin:
    """What the manifest alone pins of a Hub source (None where it says 'unpinned')."""
    revision = None if source.revision == UNPINNED else source.revision
    sha256 = source.sha256 if isinstance(source.sha256, dict) else None
    return Pin(revision, sha256, "manifest" if revision and sha256 else UNPINNED)


def recorded_pin(source, records: list[Path]) -> Pin:
    """The pin a Hub source is read against: the manifest's where it pins both the commit and the
    digests; else the first complete build in `records` (variant directories, in order of
    preference) that was built from this repo at the manifest's commit (if it names one), with
    the digests it recorded; else what the manifest pins."""
    pin = manifest_pin(source)
    if pin.origin == "manifest" or not _is_hub(source):
        return pin
    from ..builddir import why_not

    for d in records:
        try:
            provenance = json.loads((d / "checksums.json").read_text())["provenance"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(provenance, dict) or provenance.get("kind") != "transformers":
            continue
        if provenance.get("repo") != source.repo or not isinstance(provenance.get("sha256"), dict):
            continue
        if pin.revision is not None and provenance.get("revision") != pin.revision:
            continue
        if why_not(d) is not None:
            continue
        sha256 = pin.sha256 if pin.sha256 is not None else provenance["sha256"]
        return Pin(provenance.get("revision"), sha256, f"recorded by an earlier build ({d.name}/checksums.json)")
    return pin


def load_source(source, pin: Pin | None = None) -> Checkpoint:
    """Read one manifest source (zoo.manifest's OpenAISource, PtSource, ...); a Hub source
    against `pin` (default: what the manifest pins)."""
    if source.kind == "openai":
        return openai.load(source.url, source.sha256)
    if source.kind == "pt":
        return pt.load(source.path, source.sha256)
    if source.kind == "ctranslate2":
        return ctranslate2.load(source.location, source.sha256)
    if source.kind == "transformers":
        if source.repo is not None:
            return transformers.load_hub(source.repo, pin or manifest_pin(source))
        return transformers.load(source.path, source.sha256)
    raise SourceError(f"unknown source kind {source.kind!r}")


def available_offline(source, pin: Pin | None = None) -> bool:
    """True when the source can be read without the network (files present or cached)."""
    if source.kind == "openai":
        return openai.available(source.url, source.sha256)
    if source.kind == "ctranslate2":
        return ctranslate2.available(source.location)
    if _is_hub(source):
        return transformers.available_hub(source.repo, pin or manifest_pin(source))
    return Path(source.path).expanduser().exists()


def describe(source) -> str:
    """A short human name for a source (for messages and model cards)."""
    if source.kind == "openai":
        return source.url
    if source.kind == "ctranslate2":
        return "ctranslate2:" + "+".join(source.location)
    if _is_hub(source):
        return f"transformers:{source.repo}@{source.revision}"
    return f"{source.kind}:{source.path}"


def pick_source(family, offline_only: bool = False, pins: dict[int, Pin] | None = None):
    """The family's sources to try, offline-readable ones first (manifest order within each);
    `pins`: a Hub source's pin by its index in family.sources."""
    pins = pins or {}
    local = [s for i, s in enumerate(family.sources) if available_offline(s, pins.get(i))]
    remote = [] if offline_only else [s for s in family.sources if s not in local]
    return local + remote


def settle_alignment_heads(ckpt: Checkpoint, manifest_heads: list | None) -> None:
    """Give the checkpoint the alignment heads a variant is built with, and say where they came
    from (ckpt.alignment_heads_from, and the provenance): a transformers checkpoint's own (its
    generation_config.json) when they fit its decoder; else the manifest's; else heads the
    checkpoint carries otherwise (a CTranslate2 config.json); else openai-whisper's default."""
    own, own_from = ckpt.alignment_heads, ckpt.alignment_heads_from
    why_not_own = alignment_heads_problem(own, ckpt.dims) if own is not None else None
    if own is not None and why_not_own is None and own_from == transformers.GENERATION_CONFIG:
        heads, origin = own, f"the checkpoint's {own_from}"
    elif manifest_heads:
        heads, origin = manifest_heads, "the manifest"
    elif own is not None and why_not_own is None:
        heads, origin = own, f"the checkpoint's {own_from or 'own metadata'}"
    else:
        heads, origin = default_alignment_heads(ckpt.dims["n_text_layer"], ckpt.dims["n_text_head"]), HEADS_DEFAULT
    if own is not None and why_not_own is not None:
        origin += f"; the checkpoint's {own_from or 'own'} heads were ignored: {why_not_own}"
    ckpt.alignment_heads = [[int(layer), int(head)] for layer, head in heads]
    ckpt.alignment_heads_from = origin
    ckpt.provenance["alignment_heads_from"] = origin


def load_for_family(source, family, pin: Pin | None = None) -> Checkpoint:
    """Load a family's source; its dims must match the manifest's. The alignment heads are
    settled (`settle_alignment_heads`)."""
    ckpt = load_source(source, pin)
    expected = family.dims.model_dump()
    if ckpt.dims != expected:
        bad = {k: (ckpt.dims.get(k), v) for k, v in expected.items() if ckpt.dims.get(k) != v}
        raise SourceError(f"{describe(source)}: dims differ from the manifest's (source, manifest): {bad}")
    settle_alignment_heads(ckpt, family.alignment_heads)
    return ckpt


def fingerprint(source, pin: Pin | None = None) -> str | None:
    """The source's sha256 as declared in the manifest (or pinned by a record), else computed from
    its files; None for a Hub source with nothing pinned (known once downloaded)."""
    if source.kind == "openai":
        return source.sha256
    if source.kind == "pt":
        return source.sha256 or sha256_file(Path(source.path).expanduser())
    if source.kind == "ctranslate2":
        if source.sha256:
            return combined_sha256(source.sha256)
        parts, config = ctranslate2.locate(source.location)
        return combined_sha256({p.name: sha256_file(p) for p in parts + ([config] if config else [])})
    if _is_hub(source):
        pin = pin or manifest_pin(source)
        return combined_sha256(pin.sha256) if pin.sha256 else None
    return transformers.fingerprint_dir(source.path, source.sha256)


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
