"""Model cards: README.md for a built variant, rendered from templates/card.md.j2 (jinja2)."""

from __future__ import annotations

from pathlib import Path

import jinja2

from . import CONVERTER_VERSION
from .manifest import Variant

TEMPLATES = Path(__file__).with_name("templates")


def languages(variant: Variant) -> list[str]:
    """The card's language list: ["en"] or the family's multilingual languages."""
    if variant.family.language == "en":
        return ["en"]
    from whisper_mlx.tokenizer import LANGUAGES

    n = variant.family.dims.n_vocab - 51765 - 1
    return list(LANGUAGES)[:n]


def tags(variant: Variant) -> list[str]:
    out = ["whisper", "mlx", "speech-recognition", "word-timestamps", variant.dtype]
    if variant.q_bits:
        out.append(f"{variant.q_bits}bit")
    return out


def precision(variant: Variant) -> str:
    if variant.q_bits:
        own = "".join(f", {path} at {q['bits']} bits" for path, q in variant.q_overrides.items())
        return (f"{variant.q_bits}-bit quantized weights (group size {variant.q_group_size}{own}), "
                f"{variant.dtype} activations")
    return f"{variant.dtype} weights"


def pinned(provenance: dict) -> str:
    """Who pinned a Hub source's commit and digests, in the card's words."""
    origin = provenance.get("pinned", "")
    if origin == "manifest":
        return "pinned by the manifest, every file verified against its sha256"
    if origin.startswith("recorded"):
        return f"unpinned in the manifest; {origin}, every file verified against it"
    return "unpinned in the manifest: what this build downloaded, recorded here and in checksums.json"


def render_card(variant: Variant, evaluation: dict, provenance: dict, source_sha256: str) -> str:
    """The README.md text for a variant given its eval.json contents and source provenance."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    return env.get_template("card.md.j2").render(
        variant=variant,
        family=variant.family,
        evaluation=evaluation,
        metrics=evaluation["metrics"],
        provenance=provenance,
        source_sha256=source_sha256,
        languages=languages(variant),
        tags=tags(variant),
        precision=precision(variant),
        manifest_name=variant.manifest_path.name,
        converter_version=CONVERTER_VERSION,
        openai=variant.family.base_model.startswith("openai/"),
        pinned=pinned(provenance),
        reference_engine=evaluation.get("reference", {}).get("engine", "openai-whisper"),
        heads=evaluation.get("alignment_heads") or {"heads": variant.family.alignment_heads, "from": "the manifest"},
    )
