"""Load a converted model directory (config.json + weights) into a ready `Whisper`.

`load_model` accepts a local directory; `resolve` turns a Hub repo id or a zoo short name into
one (see `whisper_mlx.hub`). The directory format is documented in docs/FORMAT.md.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import backends, runtime
from .audio import N_FRAMES
from .model import ModelDimensions, Whisper, sinusoids
from .tokenizer import LANGUAGES, get_encoding

_DTYPES = {"float16": mx.float16, "float32": mx.float32, "bfloat16": mx.bfloat16}


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded; the message names the file and the problem."""


class ModelOutputError(ModelLoadError):
    """A model that loads but computes NaN or infinity (corrupt weights behind an intact header)."""


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
    problem = check_dims(dims) or check_alignment_heads(config.get("alignment_heads"), dims)
    problem = problem or check_quantization(config.get("quantization"))
    if problem:
        raise ModelLoadError(f"{path}: {problem}")
    return config, dims


# ---- what a loadable config.json holds --------------------------------------------------------

N_AUDIO_CTX = N_FRAMES // 2
"""Audio positions of a 30 s window (mel frames after the stride-2 convolution): every Whisper
encoder has this many, and the runtime feeds nothing else."""
_VOCAB_SIZES = range(51864, 51765 + 1 + len(LANGUAGES) + 1)
"""Whisper's vocabularies: 51864 tokens English-only, 51865 (99 languages) or 51866 (100)."""
_MAX_DIMS = {"n_audio_state": 8192, "n_text_state": 8192, "n_audio_head": 256, "n_text_head": 256,
             "n_audio_layer": 256, "n_text_layer": 256, "n_text_ctx": 8192}
"""Far above any Whisper (large: 1280 wide, 20 heads, 32 layers, 448 tokens), far below what
would exhaust memory: a config beyond them is corrupt or hostile, refused before allocating."""
_Q_BITS = (2, 3, 4, 5, 6, 8)
_Q_GROUP_SIZES = (32, 64, 128)


def check_dims(dims: ModelDimensions) -> str | None:
    """The first problem with the dims (field and value), or None. Needs no weights."""
    if dims.n_mels not in (80, 128):
        return f"field 'n_mels' is {dims.n_mels}: the runtime computes 80 or 128 mel bands"
    if dims.n_audio_ctx != N_AUDIO_CTX:
        return f"field 'n_audio_ctx' is {dims.n_audio_ctx}: a 30 s window has {N_AUDIO_CTX} audio positions"
    if dims.n_vocab not in _VOCAB_SIZES:
        return (f"field 'n_vocab' is {dims.n_vocab}: Whisper's vocabularies have {_VOCAB_SIZES[0]} "
                f"(English-only) to {_VOCAB_SIZES[-1]} tokens")
    for name, limit in _MAX_DIMS.items():
        if getattr(dims, name) > limit:
            return f"field {name!r} is {getattr(dims, name)}, more than the limit of {limit}"
    for side in ("audio", "text"):
        state, heads = getattr(dims, f"n_{side}_state"), getattr(dims, f"n_{side}_head")
        if state % heads:
            return f"field 'n_{side}_head' is {heads}, which does not divide n_{side}_state {state}"
    return None


def check_alignment_heads(heads, dims: ModelDimensions) -> str | None:
    """The first problem with config.json's alignment_heads ([layer, head] pairs), or None."""
    if heads is None:
        return None
    if not isinstance(heads, list):
        return "field 'alignment_heads' must be a list of [layer, head] pairs"
    for pair in heads:
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(i) is int for i in pair)):
            return f"field 'alignment_heads' holds {pair!r}, not a [layer, head] pair of integers"
        layer, head = pair
        if not 0 <= layer < dims.n_text_layer:
            return f"field 'alignment_heads' names layer {layer}, but n_text_layer is {dims.n_text_layer}"
        if not 0 <= head < dims.n_text_head:
            return f"field 'alignment_heads' names head {head} (of layer {layer}), but n_text_head is {dims.n_text_head}"
    return None


def check_quantization(quant) -> str | None:
    """The first problem with config.json's quantization (model-wide bits and group size, and
    per-module entries under their paths), or None."""
    if not quant:
        return None
    if not isinstance(quant, dict):
        return "field 'quantization' must be an object or null"
    for where, entry in [("quantization", quant)] + [(f"quantization.{k}", v) for k, v in quant.items()
                                                      if isinstance(v, dict)]:
        bits, group_size = entry.get("bits"), entry.get("group_size")
        if bits not in _Q_BITS or type(bits) is not int:
            return f"field '{where}.bits' is {bits!r}, not one of {', '.join(map(str, _Q_BITS))}"
        if group_size not in _Q_GROUP_SIZES or type(group_size) is not int:
            return f"field '{where}.group_size' is {group_size!r}, not one of {', '.join(map(str, _Q_GROUP_SIZES))}"
    return None


# ---- what the weights file must hold for the config ------------------------------------------

def _block_shapes(prefix: str, side: str, cross: bool) -> dict[str, tuple]:
    state, mlp = f"n_{side}_state", (f"n_{side}_state", 4)
    shapes: dict[str, tuple] = {}
    for attn in ("attn", "cross_attn") if cross else ("attn",):
        for proj in ("query", "key", "value", "out"):
            shapes[f"{prefix}.{attn}.{proj}.weight"] = (state, state)
            if proj != "key":
                shapes[f"{prefix}.{attn}.{proj}.bias"] = (state,)
        shapes[f"{prefix}.{attn}_ln.weight"] = shapes[f"{prefix}.{attn}_ln.bias"] = (state,)
    shapes[f"{prefix}.mlp.0.weight"], shapes[f"{prefix}.mlp.0.bias"] = (mlp, state), (mlp,)
    shapes[f"{prefix}.mlp.2.weight"], shapes[f"{prefix}.mlp.2.bias"] = (state, mlp), (state,)
    shapes[f"{prefix}.mlp_ln.weight"] = shapes[f"{prefix}.mlp_ln.bias"] = (state,)
    return shapes


def weight_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every tensor a float model directory holds (docs/FORMAT.md: OpenAI names, conv weights
    as (out, kernel, in)), with its shape for these dims."""
    return {name: _shape(terms, dims) for name, terms in _symbolic_shapes(dims).items()}


def _symbolic_shapes(dims: ModelDimensions) -> dict[str, tuple]:
    a, t = "n_audio_state", "n_text_state"
    shapes = {
        "encoder.conv1.weight": (a, 3, "n_mels"), "encoder.conv1.bias": (a,),
        "encoder.conv2.weight": (a, 3, a), "encoder.conv2.bias": (a,),
        "encoder.positional_embedding": ("n_audio_ctx", a),
    }
    for i in range(dims.n_audio_layer):
        shapes.update(_block_shapes(f"encoder.blocks.{i}", "audio", cross=False))
    shapes["encoder.ln_post.weight"] = shapes["encoder.ln_post.bias"] = (a,)
    shapes["decoder.token_embedding.weight"] = ("n_vocab", t)
    shapes["decoder.positional_embedding"] = ("n_text_ctx", t)
    for i in range(dims.n_text_layer):
        shapes.update(_block_shapes(f"decoder.blocks.{i}", "text", cross=True))
    shapes["decoder.ln.weight"] = shapes["decoder.ln.bias"] = (t,)
    return shapes


def _shape(terms: tuple, dims: ModelDimensions) -> tuple[int, ...]:
    return tuple(term if isinstance(term, int) else getattr(dims, term) if isinstance(term, str)
                 else getattr(dims, term[0]) * term[1] for term in terms)


def _why(terms: tuple, actual: tuple[int, ...], dims: ModelDimensions) -> str:
    """Which dims field an unexpected shape contradicts (the first axis that differs)."""
    if len(terms) != len(actual):
        return f"{len(terms)} axes expected"
    for term, have in zip(terms, actual):
        if isinstance(term, int):
            if have != term:
                return f"axis of {term} expected"
            continue
        name, factor = (term, 1) if isinstance(term, str) else term
        if have != getattr(dims, name) * factor:
            return f"config.json says {name} {getattr(dims, name)}, the weights {have / factor:g}"
    return ""


_FLOAT_DTYPES = {"F16", "BF16", "F32"}
_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4,
              "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_MAX_HEADER = 100 << 20  # a safetensors header for Whisper large is ~60 kB


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors file's header (8 bytes of little-endian length,
    then JSON), read without loading any tensor; each tensor's byte range is checked against its
    shape and the file's size, so a truncated or inconsistent file is refused before allocation."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or (n > _MAX_HEADER and n > size - 8):
            raise ModelLoadError(f"{path}: not a safetensors file (no valid header length); it may be truncated")
        if n > size - 8:
            raise ModelLoadError(f"{path}: truncated: the header declares {n} bytes, the file holds {size - 8}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: not a safetensors file (its header is not a JSON object)")
    data_size = size - 8 - n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            itemsize = _ITEMSIZES[dtype]
            if not all(type(d) is int and d >= 0 for d in (*shape, begin, end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{path}: corrupt header: bad entry for tensor {name!r}") from None
        if end - begin != math.prod(shape) * itemsize:
            raise ModelLoadError(f"{path}: corrupt header: tensor {name!r} of shape {shape} ({dtype}) "
                                 f"spans {end - begin} bytes")
        if end > data_size:
            raise ModelLoadError(f"{path}: truncated: tensor {name!r} ends at byte {end} of the data, "
                                 f"the file holds {data_size}")
        out[name] = (dtype, shape)
    return out


def _npz_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of a legacy weights.npz, from each member's .npy header."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
                    if read is None:
                        raise ValueError(f"{info.filename}: unknown .npy version")
                    shape, _, dtype = read(f)
                kind = {"f": "F", "u": "U", "i": "I", "b": "BOOL"}.get(dtype.kind, "?")
                out[info.filename.removesuffix(".npy")] = (kind + str(8 * dtype.itemsize) if kind != "BOOL" else kind,
                                                           tuple(shape))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ModelLoadError(f"{path}: cannot read weights ({e}); the file may be truncated") from None
    return out


# ---- mlx-whisper's layout (mlx-community's published models) ---------------------------------

def weights_format(names) -> str:
    """Which layout a weights file's tensor names follow: "whisper-mlx" (docs/FORMAT.md:
    openai-whisper's names) or "mlx-whisper" (mlx-whisper's, as mlx-community publishes: the MLP
    layers named mlp1/mlp2, no encoder.positional_embedding, the alignment heads as an integer
    tensor `alignment_heads` when the converter set them)."""
    return "mlx-whisper" if any(".mlp1." in n for n in names) else "whisper-mlx"


def from_mlx_whisper(name: str) -> str:
    """The openai-whisper name of an mlx-whisper tensor name."""
    return name.replace(".mlp1.", ".mlp.0.").replace(".mlp2.", ".mlp.2.")


def _mlx_whisper_header(path: Path, header: dict, dims: ModelDimensions) -> dict:
    """An mlx-whisper file's header as the tensors it loads as: openai-whisper's names, the
    encoder's sinusoids (computed), without the alignment heads (checked here: [n, 2] integers)."""
    out = {from_mlx_whisper(k): v for k, v in header.items() if k != "alignment_heads"}
    if "alignment_heads" in header:
        dtype, shape = header["alignment_heads"]
        if dtype[0] not in "IU" or len(shape) != 2 or shape[1] != 2:
            raise ModelLoadError(f"{path}: tensor alignment_heads is {dtype} {shape}, not [layer, head] integer rows")
    out.setdefault("encoder.positional_embedding", ("F32", (dims.n_audio_ctx, dims.n_audio_state)))
    return out


def _from_mlx_whisper_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """mlx-whisper's tensors in openai-whisper's names, with the encoder's sinusoids added
    (`alignment_heads` stays, for load_model)."""
    weights = {from_mlx_whisper(k): v for k, v in weights.items()}
    conv1 = weights.get("encoder.conv1.weight")
    if conv1 is not None and "encoder.positional_embedding" not in weights:
        weights["encoder.positional_embedding"] = mx.array(sinusoids(N_AUDIO_CTX, conv1.shape[0]))
    return weights


def check_weights(path: Path, config: dict, dims: ModelDimensions) -> None:
    """The weights file holds exactly the tensors config.json's dims and quantization describe,
    in those shapes (read from its header, before anything is loaded); else one line naming the
    file, the tensor and the dims field it contradicts. An mlx-whisper file is checked as the
    tensors it loads as (`_mlx_whisper_header`)."""
    header = safetensors_header(path) if path.suffix == ".safetensors" else _npz_header(path)
    if weights_format(header) == "mlx-whisper":
        header = _mlx_whisper_header(path, header, dims)
    symbolic = _symbolic_shapes(dims)
    quant = config.get("quantization") or None
    problem = "weights do not match config.json"
    missing = [name for name in symbolic if name not in header]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelLoadError(f"{path}: {problem}: no tensor {missing[0]}{more}")
    expected: dict[str, tuple[int, ...]] = {}
    for name, terms in symbolic.items():
        stem = name.removesuffix(".weight")
        if name.endswith(".weight") and f"{stem}.scales" in header:
            if quant is None:
                raise ModelLoadError(f"{path}: {problem}: {stem} is quantized, config.json has no quantization")
            q = layer_quantization(quant, stem)
            out_dim, in_dim = _shape(terms, dims) if len(terms) == 2 else (0, 0)
            if len(terms) != 2 or in_dim % q["group_size"] or (in_dim * q["bits"]) % 32:
                raise ModelLoadError(f"{path}: {problem}: {stem} cannot be quantized with {q}")
            expected[name] = (out_dim, in_dim * q["bits"] // 32)
            expected[f"{stem}.scales"] = expected[f"{stem}.biases"] = (out_dim, in_dim // q["group_size"])
            if header[name][0] != "U32":
                raise ModelLoadError(f"{path}: {problem}: quantized {name} is {header[name][0]}, not U32")
        else:
            expected[name] = _shape(terms, dims)
            if header[name][0] not in _FLOAT_DTYPES:
                raise ModelLoadError(f"{path}: {problem}: {name} is {header[name][0]}, not a float type")
    extra = [name for name in header if name not in expected]
    if extra:
        raise ModelLoadError(f"{path}: {problem}: unexpected tensor {extra[0]}")
    for name, shape in expected.items():
        actual = header[name][1]
        if actual != shape:
            quantized = f"{name.removesuffix('.weight')}.scales" in header
            why = "" if name not in symbolic or quantized else _why(symbolic[name], actual, dims)
            raise ModelLoadError(f"{path}: {problem}: {name} has shape {actual}, not {shape}"
                                 + (f": {why}" if why else ""))


def weights_path(model_dir: Path) -> Path:
    """weights.safetensors, or the legacy weights.npz."""
    for name in ("weights.safetensors", "weights.npz"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelLoadError(f"{model_dir}: no weights.safetensors or weights.npz")


def read_weights(model_dir: Path, config: dict | None = None, dims: ModelDimensions | None = None
                 ) -> dict[str, mx.array]:
    """Load weights.safetensors (or the legacy weights.npz); a truncated file is a clear error.
    Given config.json's contents and dims, the file's header is checked against them first
    (`check_weights`), so nothing is loaded from a file that does not match. A file written by
    mlx-whisper (`weights_format`) comes back in openai-whisper's names, with the encoder's
    positional embedding (openai-whisper's sinusoids, which mlx-whisper computes instead of
    storing) and its `alignment_heads` tensor, if any."""
    path = weights_path(model_dir)
    if dims is not None:
        check_weights(path, config or {}, dims)
    elif path.suffix == ".safetensors":
        safetensors_header(path)
    try:
        weights = dict(mx.load(str(path)))
    except Exception as e:  # mlx raises RuntimeError/ValueError with terse text
        raise ModelLoadError(f"{path}: cannot read weights ({e}); the file may be truncated") from None
    return _from_mlx_whisper_weights(weights) if weights_format(weights) == "mlx-whisper" else weights


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
    weights = read_weights(model_dir, config, dims)
    stored_heads = weights.pop("alignment_heads", None)  # mlx-whisper keeps its heads among the weights
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
    if not heads and stored_heads is not None:
        heads = stored_heads.tolist()
        if problem := check_alignment_heads(heads, dims):
            problem = problem.replace("field 'alignment_heads' ", "")
            raise ModelLoadError(f"{weights_path(model_dir)}: tensor alignment_heads {problem}")
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
