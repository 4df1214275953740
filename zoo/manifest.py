"""Model-family manifests (manifests/*.yaml): the single source of truth for every variant.

What every family shares (the standard variant recipes, the gate clip sets and thresholds, the
license) is written once, in manifests/_defaults.yaml; a family file holds its dims, alignment heads,
sources and only what differs (e.g. `variants: {4bit: {quantization: {embedding_bits: 8}}}`, or
`8bit: null` to drop a variant). `expand` merges the two into the full `Family` (timm's
generate_default_cfgs does the same for its model configs); `variant_name` is the one function
that names variants. `load_manifests` validates every file (pydantic, extra="forbid"); errors name
the file, the field and the reason. `variants` flattens them into `Variant`s with resolved gates
and Hub repo ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_serializer,
                      model_validator)

from .yamlfile import YamlFileError, load_yaml

MANIFESTS_DIR = Path(__file__).resolve().parents[1] / "manifests"
DEFAULT_ORG = "whisper-mlx"
ORG_ENV = "WHISPER_MLX_ZOO_ORG"
MANIFESTS_ENV = "WHISPER_MLX_MANIFESTS"
DEFAULTS_FILE = "_defaults.yaml"  # in the manifests directory; files starting with "_" are not families

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_STRICT = ConfigDict(extra="forbid")
UNPINNED = "unpinned"  # a Hub revision or digest that could not be looked up when the manifest was written
HUB_REPO = r"^[A-Za-z0-9][\w.-]*/[\w.-]+$"  # a Hub repo id, org/name


class _Additive(BaseModel):
    """A model that grew fields after families were first built: each of `_added` is left out of
    a dump while it holds its default, so a family that does not use it dumps (and digests) as it
    did before, and nothing built from it goes stale."""

    _added: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_added_defaults(self, handler):
        data = handler(self)
        for name in self._added:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data


class ManifestError(ValueError):
    """An invalid manifest; the message reads `file: field: reason`."""


class Dims(BaseModel):
    """openai-whisper's ModelDimensions."""

    model_config = _STRICT
    n_mels: int = Field(gt=0)
    n_audio_ctx: int = Field(gt=0)
    n_audio_state: int = Field(gt=0)
    n_audio_head: int = Field(gt=0)
    n_audio_layer: int = Field(gt=0)
    n_vocab: int = Field(gt=0)
    n_text_ctx: int = Field(gt=0)
    n_text_state: int = Field(gt=0)
    n_text_head: int = Field(gt=0)
    n_text_layer: int = Field(gt=0)


class OpenAISource(BaseModel):
    """OpenAI's published .pt (the URL embeds its sha256)."""

    model_config = _STRICT
    kind: Literal["openai"]
    url: str = Field(pattern=r"^(https?|file)://")
    sha256: Sha256


class PtSource(BaseModel):
    """A local OpenAI-format .pt file."""

    model_config = _STRICT
    kind: Literal["pt"]
    path: str
    sha256: Sha256 | None = None


DIST_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?"  # an installed distribution (PEP 508 name)
# a directory (with a "/", or starting with "~" or ".") or an installed distribution's name
CT2Location = Annotated[str, Field(pattern=rf"^(?:.*/.*|[~.].*|{DIST_NAME})$")]


class CTranslate2Source(BaseModel):
    """A CTranslate2 conversion: directories or pip packages (several: split model.bin parts).
    Only checked here; resolved (by distribution metadata, never by import) when a build reads it."""

    model_config = _STRICT
    kind: Literal["ctranslate2"]
    location: list[CT2Location] = Field(min_length=1)
    sha256: dict[str, Sha256] = {}


class TransformersSource(BaseModel):
    """A Hugging Face transformers Whisper checkpoint: a Hub repo at a commit (`repo`, `revision`)
    or a local directory (`path`), with the sha256 of each file read. For a Hub repo whose commit
    or digests could not be looked up when the manifest was written, `revision: unpinned` /
    `sha256: unpinned` say so: the first build records what it downloaded (checksums.json, the
    card) and later builds into the same output verify against that record."""

    model_config = _STRICT
    kind: Literal["transformers"]
    repo: str | None = Field(default=None, pattern=HUB_REPO)
    revision: str | None = None
    path: str | None = None
    sha256: dict[str, Sha256] | Literal["unpinned"] = {}

    @field_validator("revision")
    @classmethod
    def _commit(cls, revision: str | None) -> str | None:
        if revision is not None and revision != UNPINNED and not re.fullmatch(r"[0-9a-f]{40}", revision):
            raise ValueError(f"{revision!r} is not a commit sha (40 hex digits) nor {UNPINNED!r}: a branch or tag "
                             "can move under a manifest")
        return revision

    @model_validator(mode="after")
    def _located(self) -> "TransformersSource":
        if (self.repo is None) == (self.path is None):
            raise ValueError("give either repo (a Hub repo id) or path (a local directory)")
        if self.repo is not None:
            if self.revision is None:
                raise ValueError(f"revision: missing for Hub repo {self.repo}: pin a commit sha (40 hex digits), "
                                 f"or write {UNPINNED!r} where it cannot be looked up")
            if self.sha256 == {}:
                raise ValueError(f"sha256: missing for Hub repo {self.repo}: each file's digest, or {UNPINNED!r} "
                                 "where they cannot be looked up")
        else:
            if self.revision is not None:
                raise ValueError("revision: only a Hub repo (repo) has one, not a local path")
            if self.sha256 == UNPINNED:
                raise ValueError(f"sha256: {UNPINNED!r} is for Hub repos; leave it out for a local directory")
        return self

    @property
    def pinned(self) -> bool:
        """Whether the manifest pins both the commit and every digest (a Hub repo)."""
        return self.revision != UNPINNED and isinstance(self.sha256, dict) and bool(self.sha256)


Source = Annotated[
    Union[OpenAISource, PtSource, CTranslate2Source, TransformersSource], Field(discriminator="kind")
]


class Thresholds(_Additive):
    """Gate thresholds; None: not checked. WER values are percentage points; max_logit_diff is the
    largest absolute difference from the reference's logits (fp32) over each clip's first window."""

    model_config = _STRICT
    _added = ("max_logit_diff",)
    identical_to_reference: bool | None = None
    max_wer: float | None = Field(default=None, ge=0)
    max_wer_delta: float | None = Field(default=None, ge=0)
    max_rtf_ratio: float | None = Field(default=None, gt=0)
    max_memory_ratio: float | None = Field(default=None, gt=0)
    max_logit_diff: float | None = Field(default=None, gt=0)


# what a family's fp32 variant is compared with: openai-whisper on the same checkpoint (whole
# clips), or, for models openai-whisper does not define (Distil-Whisper), transformers' PyTorch
# implementation (greedy generation and logits over each clip's first 30 s window)
REFERENCE_ENGINES = ("openai-whisper", "transformers")


class Gates(_Additive):
    """The gate clip set (ids in zoo/clips.yaml), how to transcribe it, the reference engine and
    default thresholds."""

    model_config = _STRICT
    _added = ("reference",)
    clips: list[str] = Field(min_length=1)
    condition_on_previous_text: bool = True
    thresholds: Thresholds = Thresholds()
    reference: Literal["openai-whisper", "transformers"] = "openai-whisper"


class Quantization(BaseModel):
    """MLX affine quantization parameters."""

    model_config = _STRICT
    bits: Literal[2, 3, 4, 5, 6, 8]
    group_size: Literal[32, 64, 128] = 64
    # the token embedding (also the decoder's output projection) at its own precision: at 4 bits
    # throughout, tiny.en loops on long audio
    embedding_bits: Literal[2, 3, 4, 5, 6, 8] | None = None

    def overrides(self) -> dict[str, dict]:
        """Per-module quantization (module path -> bits and group size), as config.json stores it."""
        if self.embedding_bits is None:
            return {}
        return {"decoder.token_embedding": {"bits": self.embedding_bits, "group_size": self.group_size}}


DType = Literal["float16", "float32", "bfloat16"]
_DTYPE_SUFFIX = {"float16": "fp16", "float32": "fp32", "bfloat16": "bf16"}


def variant_suffix(dtype: str, q_bits: int | None) -> str:
    """A recipe's tag: "{bits}bit" when quantized, else the float type ("fp16", "fp32", "bf16")."""
    return f"{q_bits}bit" if q_bits is not None else _DTYPE_SUFFIX[dtype]


def variant_name(family: str, dtype: str, q_bits: int | None) -> str:
    """The one way a variant is named: `{family}-{fp16|fp32|bf16|Nbit}` (e.g. "tiny.en-4bit")."""
    return f"{family}-{variant_suffix(dtype, q_bits)}"


class VariantRecipe(BaseModel):
    """How one variant is made (dtype, quantization) and gated; its name follows from the recipe."""

    model_config = _STRICT
    dtype: DType
    quantization: Quantization | None = None
    repo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    gates: Thresholds = Thresholds()

    @property
    def suffix(self) -> str:
        return variant_suffix(self.dtype, self.quantization.bits if self.quantization else None)


class VariantSpec(VariantRecipe):
    """One variant of an expanded family: its recipe and its name."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Family(BaseModel):
    """A Whisper model family and its variants: a family file laid over the shared defaults (`expand`)."""

    model_config = _STRICT
    family: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    language: Literal["en", "multilingual"]
    license: Literal["mit"]
    base_model: str
    hub_org: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dims: Dims
    # [decoder layer, head] pairs for word timing; a transformers checkpoint's own (its
    # generation_config.json) come first, then these, then openai-whisper's default
    alignment_heads: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]] | None = None
    sources: list[Source] = Field(min_length=1)
    gates: Gates
    variants: list[VariantSpec] = Field(min_length=1)
    _path: Path | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path | None:
        """The manifest file this family was read from."""
        return self._path

    @model_validator(mode="after")
    def _consistent(self) -> "Family":
        # "multilingual" needs the multilingual vocabulary; "en" is an English-only model, on either
        # vocabulary (Distil-Whisper large: English-only on large-v3's multilingual vocabulary)
        if self.language == "multilingual" and self.dims.n_vocab < 51865:
            raise ValueError(f"language {self.language!r} contradicts dims.n_vocab {self.dims.n_vocab}")
        for layer, head in self.alignment_heads or []:
            if layer >= self.dims.n_text_layer or head >= self.dims.n_text_head:
                raise ValueError(f"alignment head [{layer}, {head}] is outside the decoder's layers/heads")
        for v in self.variants:
            named = variant_name(self.family, v.dtype, v.quantization.bits if v.quantization else None)
            if v.name != named:
                raise ValueError(f"variant {v.name!r}: its recipe names it {named!r}")
        return self


class GateDefaults(BaseModel):
    """The gates every family gets: a clip set per language kind, decoding and thresholds."""

    model_config = _STRICT
    clips: dict[Literal["en", "multilingual"], list[str]]
    condition_on_previous_text: bool = True
    thresholds: Thresholds = Thresholds()


RunnerLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class LargeRunner(BaseModel):
    """Where families at least `min_n_audio_state` wide are built."""

    model_config = _STRICT
    min_n_audio_state: int = Field(gt=0)
    runner: RunnerLabel
    timeout_minutes: int = Field(gt=0, le=4320)


class Release(BaseModel):
    """Where the release workflow builds and gates a family (a GitHub Actions runner label)."""

    model_config = _STRICT
    runner: RunnerLabel
    timeout_minutes: int = Field(gt=0, le=4320)  # hosted runners stop a job at 6 h, self-hosted at 72 h
    large: LargeRunner | None = None

    def for_family(self, family: "Family") -> tuple[str, int]:
        """(runner label, job timeout in minutes) for one family."""
        if self.large and family.dims.n_audio_state >= self.large.min_n_audio_state:
            return self.large.runner, self.large.timeout_minutes
        return self.runner, self.timeout_minutes


class Defaults(BaseModel):
    """manifests/_defaults.yaml: what every family shares, written once."""

    model_config = _STRICT
    license: Literal["mit"]
    gates: GateDefaults
    release: Release
    # the standard variants, keyed by the suffix their recipe names them with, in build order
    variants: dict[str, VariantRecipe] = Field(min_length=1)

    @model_validator(mode="after")
    def _keys_name_recipes(self) -> "Defaults":
        for key, recipe in self.variants.items():
            if key != recipe.suffix:
                raise ValueError(f"variants.{key}: the recipe makes a {recipe.suffix!r} variant, not {key!r}")
        return self


@dataclass(frozen=True)
class Variant:
    """A buildable variant: its family, conversion parameters, resolved gates and Hub repo id."""

    name: str
    family: Family
    dtype: str
    q_bits: int | None
    q_group_size: int
    q_overrides: dict[str, dict]  # module path -> its own bits / group_size
    repo_id: str
    thresholds: Thresholds
    manifest_path: Path

    @property
    def size(self) -> str:
        return self.family.family

    @property
    def suffix(self) -> str:
        """The variant's tag after the family name, e.g. "4bit"."""
        return self.name[len(self.family.family) + 1 :]

    @property
    def digest(self) -> str:
        """sha256 of everything in the manifest that determines this variant's output."""
        family = self.family.model_dump(mode="json", exclude={"variants", "hub_org"})
        spec = next(v for v in self.family.variants if v.name == self.name).model_dump(mode="json")
        blob = json.dumps({"family": family, "variant": spec}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def manifests_root(manifests_dir: Path | str | None = None) -> Path:
    """The manifests directory: the one given, else $WHISPER_MLX_MANIFESTS, else the repo's manifests/."""
    return Path(manifests_dir or os.environ.get(MANIFESTS_ENV) or MANIFESTS_DIR)


def _read_yaml(path: Path):
    try:
        return load_yaml(path)
    except YamlFileError as e:
        raise ManifestError(str(e)) from None


def _validation_error(path: Path, e: ValidationError, prefix: tuple = ()) -> ManifestError:
    """`file: field: reason` for the first error (fields under `prefix`)."""
    err = e.errors()[0]
    where = ".".join(str(x) for x in (*prefix, *err["loc"]))
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return ManifestError(f"{path}: {where + ': ' if where else ''}{msg}{more}")


def load_defaults(path: Path) -> Defaults:
    """Parse and validate the shared defaults file."""
    if not path.is_file():
        raise ManifestError(f"{path}: missing (the variant recipes and gates every family file builds on)")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    try:
        return Defaults.model_validate(data)
    except ValidationError as e:
        raise _validation_error(path, e) from None


def _merge(base, override):
    """`override` laid over `base`: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in override.items()}}
    return override


def _variants(family: str, overrides: dict, defaults: Defaults, path: Path) -> list[dict]:
    """The family's variant specs: each standard recipe with the family's changes laid over it (null:
    left out), then any variant only this family declares; named by `variant_name`."""
    specs = []
    for key in [*defaults.variants, *(k for k in overrides if k not in defaults.variants)]:
        override = overrides.get(key, {})
        if key in overrides and override is None:
            continue
        if not isinstance(override, dict):
            raise ManifestError(f"{path}: variants.{key}: expected a mapping (or null to leave it out), not {override!r}")
        if "name" in override:
            raise ManifestError(f"{path}: variants.{key}.name: a variant's name follows from its recipe; not settable")
        base = defaults.variants[key].model_dump(exclude_defaults=True) if key in defaults.variants else {}
        try:
            recipe = VariantRecipe.model_validate(_merge(base, override))
        except ValidationError as e:
            raise _validation_error(path, e, ("variants", key)) from None
        if recipe.suffix != key:
            raise ManifestError(f"{path}: variants.{key}: the recipe makes a {recipe.suffix!r} variant, not {key!r}")
        bits = recipe.quantization.bits if recipe.quantization else None
        specs.append({**recipe.model_dump(), "name": variant_name(family, recipe.dtype, bits)})
    return specs


def expand(data: dict, defaults: Defaults, path: Path) -> dict:
    """A family file's mapping laid over the shared defaults: the full family, as `Family` validates it."""
    out = {"license": defaults.license, **data}
    gates = data.get("gates", {})
    if not isinstance(gates, dict):
        raise ManifestError(f"{path}: gates: expected a mapping (what differs from {DEFAULTS_FILE}'s gates)")
    gate_defaults = defaults.gates.model_dump(exclude={"clips"})
    if data.get("language") in defaults.gates.clips:
        gate_defaults["clips"] = defaults.gates.clips[data["language"]]
    out["gates"] = _merge(gate_defaults, gates)
    overrides = data.get("variants", {})
    if not isinstance(overrides, dict):
        raise ManifestError(
            f"{path}: variants: expected a mapping from variant suffix ({', '.join(defaults.variants)}) to what "
            f"differs from {DEFAULTS_FILE} (null: left out), not a {type(overrides).__name__}"
        )
    out["variants"] = _variants(str(data.get("family")), overrides, defaults, path)
    return out


def load_family(path: Path, defaults: Defaults) -> Family:
    """Parse one family file, lay it over the defaults and validate the result."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    try:
        family = Family.model_validate(expand(data, defaults, path))
    except ValidationError as e:
        raise _validation_error(path, e) from None
    family._path = path
    return family


def load_manifests(manifests_dir: Path | str | None = None) -> list[Family]:
    """All manifests in a directory, validated; duplicate families, variants or repo ids refused."""
    root = manifests_root(manifests_dir)
    paths = sorted(p for p in root.glob("*.yaml") if not p.name.startswith("_"))
    if not paths:
        raise ManifestError(f"{root}: no manifests (*.yaml)")
    defaults = load_defaults(root / DEFAULTS_FILE)
    families = []
    seen: dict[str, Path] = {}
    for path in paths:
        family = load_family(path, defaults)
        keys = [("family", family.family)] + [("variant", v.name) for v in family.variants]
        keys += [("repo", _repo_name(family, v)) for v in family.variants]
        for key in keys:
            if key in seen:
                raise ManifestError(f"{path}: {key[0]} {key[1]!r} is already defined in {seen[key]}")
            seen[key] = path
        families.append(family)
    return families


def _repo_name(family: Family, spec: VariantSpec) -> str:
    return spec.repo or f"whisper-{spec.name}"


def hub_org(family: Family) -> str:
    """The Hub org: $WHISPER_MLX_ZOO_ORG, else the manifest's hub_org, else whisper-mlx."""
    return os.environ.get(ORG_ENV) or family.hub_org or DEFAULT_ORG


def variants(manifests_dir: Path | str | None = None) -> list[Variant]:
    """Every variant of every manifest, with family-default gates merged under its own."""
    out = []
    for family in load_manifests(manifests_dir):
        defaults = family.gates.thresholds.model_dump(exclude_none=True)
        for spec in family.variants:
            thresholds = Thresholds(**{**defaults, **spec.gates.model_dump(exclude_none=True)})
            out.append(
                Variant(
                    name=spec.name,
                    family=family,
                    dtype=spec.dtype,
                    q_bits=spec.quantization.bits if spec.quantization else None,
                    q_group_size=spec.quantization.group_size if spec.quantization else 64,
                    q_overrides=spec.quantization.overrides() if spec.quantization else {},
                    repo_id=f"{hub_org(family)}/{_repo_name(family, spec)}",
                    thresholds=thresholds,
                    manifest_path=family.path,
                )
            )
    return out


def find_family(name: str, manifests_dir: Path | str | None = None) -> Family:
    """The family called `name` (e.g. "tiny.en"); ManifestError listing the known ones otherwise."""
    families = load_manifests(manifests_dir)
    for family in families:
        if family.family == name:
            return family
    known = ", ".join(f.family for f in families)
    raise ManifestError(f"{manifests_root(manifests_dir)}: no model family {name!r} (known: {known})")


def find_variant(name: str, manifests_dir: Path | str | None = None) -> Variant:
    """The variant called `name` (e.g. "tiny.en-4bit")."""
    all_variants = variants(manifests_dir)
    for v in all_variants:
        if v.name == name:
            return v
    raise ManifestError(f"{manifests_root(manifests_dir)}: no variant {name!r} (see python -m tools.build --list)")
