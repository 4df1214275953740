"""Model-family manifests (manifests/*.yaml): the single source of truth for every variant.

`load_manifests` validates each file (pydantic, extra="forbid"); errors name the file, the field
and the reason. `variants` flattens them into `Variant`s with resolved gates and Hub repo ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

MANIFESTS_DIR = Path(__file__).resolve().parents[1] / "manifests"
DEFAULT_ORG = "whisper-mlx"
ORG_ENV = "WHISPER_MLX_ZOO_ORG"
MANIFESTS_ENV = "WHISPER_MLX_MANIFESTS"

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_STRICT = ConfigDict(extra="forbid")


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


class CTranslate2Source(BaseModel):
    """A CTranslate2 conversion: directories or pip packages (several: split model.bin parts)."""

    model_config = _STRICT
    kind: Literal["ctranslate2"]
    location: list[str] = Field(min_length=1)
    sha256: dict[str, Sha256] = {}


class TransformersSource(BaseModel):
    """A Hugging Face transformers Whisper directory (safetensors)."""

    model_config = _STRICT
    kind: Literal["transformers"]
    path: str
    sha256: dict[str, Sha256] = {}


Source = Annotated[
    Union[OpenAISource, PtSource, CTranslate2Source, TransformersSource], Field(discriminator="kind")
]


class Thresholds(BaseModel):
    """Gate thresholds; None: not checked. WER values are percentage points."""

    model_config = _STRICT
    identical_to_reference: bool | None = None
    max_wer: float | None = Field(default=None, ge=0)
    max_wer_delta: float | None = Field(default=None, ge=0)
    max_rtf_ratio: float | None = Field(default=None, gt=0)
    max_memory_ratio: float | None = Field(default=None, gt=0)


class Gates(BaseModel):
    """The gate clip set (ids in zoo/clips.yaml), how to transcribe it, and default thresholds."""

    model_config = _STRICT
    clips: list[str] = Field(min_length=1)
    condition_on_previous_text: bool = True
    thresholds: Thresholds = Thresholds()


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


class VariantSpec(BaseModel):
    """One variant as written in a manifest."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dtype: Literal["float16", "float32", "bfloat16"]
    quantization: Quantization | None = None
    repo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    gates: Thresholds = Thresholds()


class Family(BaseModel):
    """One manifest file: a Whisper model family and its variants."""

    model_config = _STRICT
    family: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    language: Literal["en", "multilingual"]
    license: Literal["mit"]
    base_model: str
    hub_org: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dims: Dims
    alignment_heads: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]]
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
        multilingual = self.dims.n_vocab >= 51865
        if multilingual != (self.language == "multilingual"):
            raise ValueError(f"language {self.language!r} contradicts dims.n_vocab {self.dims.n_vocab}")
        for layer, head in self.alignment_heads:
            if layer >= self.dims.n_text_layer or head >= self.dims.n_text_head:
                raise ValueError(f"alignment head [{layer}, {head}] is outside the decoder's layers/heads")
        for v in self.variants:
            if not v.name.startswith(self.family + "-"):
                raise ValueError(f"variant name {v.name!r} must start with {self.family + '-'!r}")
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


def _default_dir(manifests_dir: Path | str | None) -> Path:
    return Path(manifests_dir or os.environ.get(MANIFESTS_ENV) or MANIFESTS_DIR)


def load_family(path: Path) -> Family:
    """Parse and validate one manifest file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    try:
        return Family.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ManifestError(f"{path}: {loc}: {err['msg']}{more}") from None


def load_manifests(manifests_dir: Path | str | None = None) -> list[Family]:
    """All manifests in a directory, validated; duplicate families, variants or repo ids refused."""
    root = _default_dir(manifests_dir)
    paths = sorted(root.glob("*.yaml"))
    if not paths:
        raise ManifestError(f"{root}: no manifests (*.yaml)")
    families = []
    seen: dict[str, Path] = {}
    for path in paths:
        family = load_family(path)
        family._path = path
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
    raise ManifestError(f"{_default_dir(manifests_dir)}: no model family {name!r} (known: {known})")


def find_variant(name: str, manifests_dir: Path | str | None = None) -> Variant:
    """The variant called `name` (e.g. "tiny.en-4bit")."""
    all_variants = variants(manifests_dir)
    for v in all_variants:
        if v.name == name:
            return v
    raise ManifestError(f"{_default_dir(manifests_dir)}: no variant {name!r} (see tools/build.py --list)")
