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

    @property
    def source_sha256(self) -> str:
        """One digest for the source files: the file's sha256, or a hash over all of them."""
        return combined_sha256(self.provenance.get("sha256", {}))


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
