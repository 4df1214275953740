"""The common result of every source: an OpenAI-format state dict, its dims and alignment heads."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DIM_FIELDS = (
    "n_mels",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_vocab",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
)


class SourceError(RuntimeError):
    """A source that cannot be read, verified or reached; the message names it."""


@dataclass
class Checkpoint:
    """OpenAI Whisper weights as numpy arrays (OpenAI names/shapes, PyTorch conv layout)."""

    state_dict: dict[str, np.ndarray]
    dims: dict[str, int]
    alignment_heads: list[list[int]] | None
    provenance: dict = field(default_factory=dict)
    # where the checkpoint's own alignment heads were read (e.g. "generation_config.json"); the
    # build settles the heads a variant gets (zoo.sources.settle_alignment_heads)
    alignment_heads_from: str | None = None
    # the directory the source's files were read from (a transformers checkpoint: what the
    # transformers reference loads with from_pretrained); not part of the provenance
    source_dir: Path | None = None

    @property
    def source_sha256(self) -> str:
        """One digest for the source files: the file's sha256, or a hash over all of them."""
        return combined_sha256(self.provenance.get("sha256", {}))


HEADS_DEFAULT = "openai-whisper's default (every head of the decoder's second half)"


def default_alignment_heads(n_text_layer: int, n_text_head: int) -> list[list[int]]:
    """openai-whisper's heads for a model without its own: every head of the decoder's second half."""
    return [[layer, head] for layer in range(n_text_layer // 2, n_text_layer) for head in range(n_text_head)]


def alignment_heads_problem(heads, dims: dict[str, int]) -> str | None:
    """Why `heads` cannot serve a decoder of these dims ([layer, head] pairs inside it), or None."""
    if not isinstance(heads, list) or not heads:
        return "not a non-empty list of [layer, head] pairs"
    for pair in heads:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(type(i) is int for i in pair)):
            return f"{pair!r} is not a [layer, head] pair"
        layer, head = pair
        if not (0 <= layer < dims["n_text_layer"] and 0 <= head < dims["n_text_head"]):
            return (f"[{layer}, {head}] is outside the decoder ({dims['n_text_layer']} layers of "
                    f"{dims['n_text_head']} heads)")
    return None


def combined_sha256(file_hashes: dict[str, str]) -> str:
    """A single file's sha256, or the sha256 of the sorted `name:sha256` lines of several."""
    if len(file_hashes) == 1:
        return next(iter(file_hashes.values()))
    blob = "\n".join(f"{name}:{digest}" for name, digest in sorted(file_hashes.items()))
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str:
    """Hash `path`; refuse it (SourceError naming the file) when it differs from `expected`."""
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        raise SourceError(f"{path}: sha256 mismatch (expected {expected}, got {actual})")
    return actual


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> np.ndarray:
    """The encoder's positional embedding, computed as openai/whisper does (float32)."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def write_openai_checkpoint(ckpt: Checkpoint, path: Path) -> Path:
    """Save `ckpt` as openai-whisper's .pt ({"dims", "model_state_dict"}) so whisper.load_model reads it."""
    import torch  # lazy: only the reference path needs torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dims": {k: int(ckpt.dims[k]) for k in DIM_FIELDS},
        "model_state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ckpt.state_dict.items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def dims_from_state_dict(sd: dict[str, np.ndarray], n_audio_head: int, n_text_head: int) -> dict[str, int]:
    """The 10 ModelDimensions from weight shapes (head counts are not recoverable from shapes)."""
    n_audio_layer = len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks.")})
    n_text_layer = len({k.split(".")[2] for k in sd if k.startswith("decoder.blocks.")})
    return {
        "n_mels": int(sd["encoder.conv1.weight"].shape[1]),
        "n_audio_ctx": int(sd["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(sd["encoder.conv1.weight"].shape[0]),
        "n_audio_head": int(n_audio_head),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(sd["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(sd["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(sd["decoder.token_embedding.weight"].shape[1]),
        "n_text_head": int(n_text_head),
        "n_text_layer": n_text_layer,
    }


def _block_shapes(prefix: str, n: int, cross: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for attn in ("attn", "cross_attn") if cross else ("attn",):
        for proj in ("query", "key", "value", "out"):
            shapes[f"{prefix}.{attn}.{proj}.weight"] = (n, n)
            if proj != "key":  # openai-whisper's key projections have no bias
                shapes[f"{prefix}.{attn}.{proj}.bias"] = (n,)
        shapes[f"{prefix}.{attn}_ln.weight"] = shapes[f"{prefix}.{attn}_ln.bias"] = (n,)
    shapes[f"{prefix}.mlp.0.weight"], shapes[f"{prefix}.mlp.0.bias"] = (4 * n, n), (4 * n,)
    shapes[f"{prefix}.mlp.2.weight"], shapes[f"{prefix}.mlp.2.bias"] = (n, 4 * n), (n,)
    shapes[f"{prefix}.mlp_ln.weight"] = shapes[f"{prefix}.mlp_ln.bias"] = (n,)
    return shapes


def state_dict_shapes(dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Every tensor of an openai-whisper state dict with these dims, and its shape (PyTorch
    layout: convolutions (out, in, kernel))."""
    a, t = dims["n_audio_state"], dims["n_text_state"]
    shapes = {
        "encoder.conv1.weight": (a, dims["n_mels"], 3), "encoder.conv1.bias": (a,),
        "encoder.conv2.weight": (a, a, 3), "encoder.conv2.bias": (a,),
        "encoder.positional_embedding": (dims["n_audio_ctx"], a),
    }
    for i in range(dims["n_audio_layer"]):
        shapes.update(_block_shapes(f"encoder.blocks.{i}", a, cross=False))
    shapes["encoder.ln_post.weight"] = shapes["encoder.ln_post.bias"] = (a,)
    shapes["decoder.token_embedding.weight"] = (dims["n_vocab"], t)
    shapes["decoder.positional_embedding"] = (dims["n_text_ctx"], t)
    for i in range(dims["n_text_layer"]):
        shapes.update(_block_shapes(f"decoder.blocks.{i}", t, cross=True))
    shapes["decoder.ln.weight"] = shapes["decoder.ln.bias"] = (t,)
    return shapes


def state_dict_problem(sd: dict[str, np.ndarray], dims: dict[str, int], name=lambda n: n) -> str | None:
    """The first problem of a state dict against its dims (a missing, unexpected or misshapen
    tensor, named through `name`, e.g. the source's own naming), or None."""
    expected = state_dict_shapes(dims)
    missing = [n for n in expected if n not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"missing tensor {name(missing[0])}{more}"
    extra = [n for n in sd if n not in expected]
    if extra:
        return f"unexpected tensor {name(extra[0])} (not part of openai-whisper's architecture)"
    for n, shape in expected.items():
        if tuple(sd[n].shape) != shape:
            return f"tensor {name(n)} has shape {tuple(sd[n].shape)}, the config's dims give {shape}"
    return None
