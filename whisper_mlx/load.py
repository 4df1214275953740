"""Load a converted model directory (config.json + weights) into a ready `Whisper`.

`load_model` accepts a local directory; `resolve` turns a Hub repo id or a zoo short name into
one (see `whisper_mlx.hub`). The directory format is documented in docs/FORMAT.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import backends, runtime
from .model import ModelDimensions, Whisper
from .tokenizer import get_encoding

_DTYPES = {"float16": mx.float16, "float32": mx.float32, "bfloat16": mx.bfloat16}


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded; the message names the file and the problem."""


def read_config(model_dir: Path) -> tuple[dict, ModelDimensions]:
    """Parse and check config.json; errors name the file and field."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (a model directory holds config.json and weights.safetensors)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    try:
        dims = ModelDimensions.from_config(config)
    except KeyError as e:
        raise ModelLoadError(f"{path}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: a dimension is not an integer ({e})") from None
    bad = [k for k, v in vars(dims).items() if v <= 0]
    if bad:
        raise ModelLoadError(f"{path}: field {bad[0]!r} must be positive")
    return config, dims


def read_weights(model_dir: Path) -> dict[str, mx.array]:
    """Load weights.safetensors (or the legacy weights.npz); a truncated file is a clear error."""
    for name in ("weights.safetensors", "weights.npz"):
        path = model_dir / name
        if path.is_file():
            try:
                return dict(mx.load(str(path)))
            except Exception as e:  # mlx raises RuntimeError/ValueError with terse text
                raise ModelLoadError(f"{path}: cannot read weights ({e}); the file may be truncated") from None
    raise ModelLoadError(f"{model_dir}: no weights.safetensors or weights.npz")


def layer_quantization(quant: dict, path: str) -> dict:
    """A module's bits and group size: its own entry under its path in config.json's
    "quantization" (mlx-lm's convention for mixed precision), else the model-wide ones."""
    own = quant.get(path)
    source = own if isinstance(own, dict) else quant
    return {"group_size": int(source["group_size"]), "bits": int(source["bits"])}


def _dequantize(weights: dict[str, mx.array], quant: dict) -> dict[str, mx.array]:
    """Expand quantized layers to float: on the CPU float matmuls are many times faster."""
    out = {}
    for key, value in weights.items():
        stem, _, leaf = key.rpartition(".")
        if leaf in ("scales", "biases") and stem + ".scales" in weights:
            continue
        if leaf == "weight" and stem + ".scales" in weights:
            value = mx.dequantize(
                value, weights[stem + ".scales"], weights[stem + ".biases"], **layer_quantization(quant, stem)
            )
        out[key] = value
    return out


def load_model(
    path_or_hf_repo: str | Path,
    dtype: mx.Dtype | str | None = None,
    revision: str | None = None,
    backend: str | None = None,
) -> Whisper:
    """Load a model from a directory, Hub repo id or zoo short name.

    dtype: compute dtype; by default float32 on the CPU (fast there, and dequantizes quantized
    weights) and the stored dtype on a GPU (quantized layers stay quantized).
    backend: the decoding backend ("mlx", "cpu", "cuda"); by default the rule of
    `whisper_mlx.backends` (also WHISPER_MLX_BACKEND). The model itself is plain model.py; what a
    backend prepares from it lives in the backend.
    """
    if backend is not None and backend not in backends.NAMES:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(backends.NAMES)}")
    model_dir = resolve(path_or_hf_repo, revision=revision)
    config, dims = read_config(model_dir)
    weights = read_weights(model_dir)
    quant = config.get("quantization") or None
    if isinstance(dtype, str):
        dtype = _DTYPES[dtype]
    if dtype is None:
        dtype = mx.float32 if runtime.on_cpu() else _DTYPES.get(config.get("dtype", "float16"), mx.float16)
    if quant and runtime.on_cpu():
        weights = _dequantize(weights, quant)
        quant = None

    model = Whisper(dims)
    if quant:
        nn.quantize(
            model,
            group_size=quant["group_size"],
            bits=quant["bits"],
            class_predicate=lambda p, m: f"{p}.scales" in weights and layer_quantization(quant, p),
        )
    weights = {k: (v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in weights.items()}
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelLoadError(f"{model_dir / 'weights.safetensors'}: weights do not match config.json ({e})") from None
    heads = config.get("alignment_heads")
    if heads:
        model.alignment_heads = [(int(layer), int(head)) for layer, head in heads]
    model.eval()
    mx.eval(model.parameters())
    backends.attach(model, backend)
    # the model's vocabulary is part of loading it (as faster-whisper's model loads its tokenizer),
    # not of the first transcription
    get_encoding(name="multilingual" if model.is_multilingual else "gpt2", num_languages=model.num_languages)
    return model


def resolve(path_or_hf_repo: str | Path, revision: str | None = None) -> Path:
    """A local model directory for a path (Hub repos and short names: see whisper_mlx.hub)."""
    path = Path(path_or_hf_repo).expanduser()
    if path.is_dir():
        return path
    try:
        from .hub import resolve_remote
    except ImportError:
        raise ModelLoadError(f"{path_or_hf_repo}: no such model directory") from None
    return resolve_remote(str(path_or_hf_repo), revision=revision)
