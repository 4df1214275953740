"""Checkpoint → model directory (config.json + weights.safetensors), as docs/FORMAT.md specifies.

Steps: rename is already done by the source (OpenAI names); here: conv layout, dtype, optional
MLX affine quantization, then an atomic write (temp dir beside the target, then rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from whisper_mlx import runtime  # noqa: F401  (before mlx.core: optimized BLAS)

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from whisper_mlx.model import ModelDimensions, Whisper

from . import CONVERTER_VERSION
from .sources import DIM_FIELDS, Checkpoint

DTYPES = {"float16": mx.float16, "float32": mx.float32, "bfloat16": mx.bfloat16}
Q_BITS = (2, 3, 4, 5, 6, 8)
Q_GROUP_SIZES = (32, 64, 128)


class ConvertError(ValueError):
    """Bad conversion parameters; the message names the parameter."""


def check_params(dtype: str, q_bits: int | None, q_group_size: int) -> None:
    """Refuse a dtype or quantization MLX cannot produce."""
    if dtype not in DTYPES:
        raise ConvertError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if q_bits is not None and q_bits not in Q_BITS:
        raise ConvertError(f"q_bits: {q_bits} is not one of {Q_BITS}")
    if q_bits is not None and q_group_size not in Q_GROUP_SIZES:
        raise ConvertError(f"q_group_size: {q_group_size} is not one of {Q_GROUP_SIZES}")


def mlx_weights(ckpt: Checkpoint, dtype: str) -> dict[str, mx.array]:
    """OpenAI arrays → MLX arrays in `dtype`, conv weights moved to MLX layout (out, k, in)."""
    out = {}
    for name, value in ckpt.state_dict.items():
        if value.ndim == 3 and name.endswith(".weight"):
            value = value.transpose(0, 2, 1)
        out[name] = mx.array(value).astype(DTYPES[dtype])
    return out


def build_model(ckpt: Checkpoint, dtype: str, q_bits: int | None = None, q_group_size: int = 64,
                q_overrides: dict[str, dict] | None = None) -> Whisper:
    """A `Whisper` holding the checkpoint's weights (strict load), quantized when q_bits is set;
    q_overrides maps a module path (e.g. "decoder.token_embedding") to its own bits/group_size."""
    model = Whisper(ModelDimensions(**{k: int(ckpt.dims[k]) for k in DIM_FIELDS}))
    model.load_weights(list(mlx_weights(ckpt, dtype).items()), strict=True)
    if q_bits is not None:
        overrides = q_overrides or {}

        def params(path: str, m: nn.Module) -> bool | dict:
            own = {"bits": q_bits, "group_size": q_group_size, **overrides.get(path, {})}
            if not isinstance(m, (nn.Linear, nn.Embedding)) or m.weight.shape[-1] % own["group_size"]:
                return False
            return own

        nn.quantize(model, group_size=q_group_size, bits=q_bits, class_predicate=params)
    return model


def quantization_config(q_bits: int | None, q_group_size: int, q_overrides: dict[str, dict] | None) -> dict | None:
    """config.json's "quantization": model-wide bits and group size, any per-module overrides under
    their paths (mlx-lm's convention); None for float weights."""
    return {"group_size": q_group_size, "bits": q_bits, **(q_overrides or {})} if q_bits is not None else None


def model_config(
    ckpt: Checkpoint, dtype: str, q_bits: int | None, q_group_size: int, name: str | None, extra: dict | None,
    q_overrides: dict[str, dict] | None = None,
) -> dict:
    """config.json contents: flat dims, alignment heads, dtype, quantization (with any per-module
    overrides under their paths, as mlx-lm writes them), name, converter version."""
    config: dict = {"model_type": "whisper"}
    config.update({k: int(ckpt.dims[k]) for k in DIM_FIELDS})
    config["alignment_heads"] = ckpt.alignment_heads
    config["dtype"] = dtype
    config["quantization"] = quantization_config(q_bits, q_group_size, q_overrides)
    config["name"] = name
    config["converter_version"] = CONVERTER_VERSION
    config.update(extra or {})
    return config


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temp dir beside `out_dir`; on success it replaces `out_dir` by rename, else vanishes."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_model_dir(model: Whisper, config: dict, out_dir: Path) -> None:
    """Write config.json and weights.safetensors into an existing directory."""
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out_dir / "weights.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def convert(
    ckpt: Checkpoint,
    out_dir: Path,
    dtype: str = "float16",
    q_bits: int | None = None,
    q_group_size: int = 64,
    name: str | None = None,
    extra_config: dict | None = None,
    q_overrides: dict[str, dict] | None = None,
) -> Path:
    """Write `ckpt` as a model directory at `out_dir` (atomically); returns `out_dir`."""
    check_params(dtype, q_bits, q_group_size)
    out_dir = Path(out_dir)
    model = build_model(ckpt, dtype, q_bits, q_group_size, q_overrides)
    config = model_config(ckpt, dtype, q_bits, q_group_size, name, extra_config, q_overrides)
    with atomic_dir(out_dir) as tmp:
        write_model_dir(model, config, tmp)
    return out_dir


def convert_size(
    size: str,
    out_dir: Path,
    dtype: str = "float16",
    q_bits: int | None = None,
    q_group_size: int = 64,
    manifests_dir: Path | None = None,
) -> Path:
    """Convert a model family by name (e.g. "tiny.en") from its first available manifest source."""
    from .manifest import find_family, variant_name
    from .sources import load_first_available

    check_params(dtype, q_bits, q_group_size)
    family = find_family(size, manifests_dir)
    ckpt = load_first_available(family)
    return convert(ckpt, out_dir, dtype, q_bits, q_group_size, name=variant_name(family.family, dtype, q_bits))


def convert_pt(
    pt_path: Path, out_dir: Path, dtype: str = "float16", q_bits: int | None = None, q_group_size: int = 64
) -> Path:
    """Convert a local OpenAI-format .pt (alignment heads: the runtime's default)."""
    from .sources import pt

    check_params(dtype, q_bits, q_group_size)
    ckpt = pt.load(pt_path)
    return convert(ckpt, out_dir, dtype, q_bits, q_group_size, name=Path(pt_path).stem)


def convert_transformers(
    name_or_path: str,
    out_dir: Path,
    dtype: str = "float16",
    q_bits: int | None = None,
    q_group_size: int = 64,
    revision: str | None = None,
    sha256: dict[str, str] | None = None,
) -> Path:
    """Convert a transformers Whisper checkpoint: a local directory, or a Hub repo id at `revision`
    (default: main) through huggingface_hub's cache. `sha256` (file name -> digest) is checked for
    the files it lists; a pickled checkpoint (pytorch_model.bin) is read only when listed there.
    Alignment heads: the checkpoint's generation_config.json's where they fit, else
    openai-whisper's default."""
    from .sources import Pin, settle_alignment_heads, transformers

    check_params(dtype, q_bits, q_group_size)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ConvertError(f"revision: {name_or_path} is a local directory, not a Hub repo")
        ckpt = transformers.load(path, sha256)
        name = path.resolve().name
    else:
        ckpt = transformers.load_hub(name_or_path, Pin(revision, sha256, "command line", complete=False))
        name = name_or_path.rsplit("/", 1)[-1]
    settle_alignment_heads(ckpt, None)
    source = {k: ckpt.provenance[k] for k in ("kind", "location", "revision", "alignment_heads_from") if k in ckpt.provenance}
    return convert(ckpt, out_dir, dtype, q_bits, q_group_size, name=name, extra_config={"source": source})
