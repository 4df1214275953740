"""A local OpenAI-format checkpoint (.pt with "dims" and "model_state_dict") → Checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import DIM_FIELDS, Checkpoint, SourceError, sinusoids, verify_sha256

KIND = "pt"


def read_pt(path: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The state dict (numpy, bfloat16 widened to float32) and dims of an openai-whisper .pt."""
    import torch  # lazy: only this source needs torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise SourceError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    if not isinstance(raw, dict) or "dims" not in raw or "model_state_dict" not in raw:
        raise SourceError(f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    missing = [k for k in DIM_FIELDS if k not in raw["dims"]]
    if missing:
        raise SourceError(f"{path}: dims lacks {', '.join(missing)}")
    sd = {}
    for name, tensor in raw["model_state_dict"].items():
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        sd[name] = tensor.numpy().copy()
    dims = {k: int(raw["dims"][k]) for k in DIM_FIELDS}
    return sd, dims


def load(path: str | Path, sha256: str | None = None, kind: str = KIND, location: str | None = None) -> Checkpoint:
    """Read an openai-whisper .pt; `sha256` (if given) must match the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"{path}: no such checkpoint file")
    digest = verify_sha256(path, sha256)
    sd, dims = read_pt(path)
    if "encoder.positional_embedding" not in sd:
        sd["encoder.positional_embedding"] = sinusoids(dims["n_audio_ctx"], dims["n_audio_state"]).astype(
            sd["encoder.conv1.weight"].dtype
        )
    provenance = {"kind": kind, "location": location or str(path), "sha256": {path.name: digest}}
    return Checkpoint(state_dict=sd, dims=dims, alignment_heads=None, provenance=provenance)
