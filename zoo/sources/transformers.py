"""A Hugging Face transformers Whisper directory (config.json + *.safetensors) → Checkpoint.

Read with mlx (no torch, no transformers needed); names mapped to openai/whisper's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, SourceError, verify_sha256

KIND = "transformers"

# (HF pattern, OpenAI replacement), applied in order to each name after stripping "model."
_RENAMES = [
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"^encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"\.layers\.(\d+)\.", r".blocks.\1."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
]
# OpenAI name → HF name, for writing HF-format checkpoints (tests, interop)
_INVERSE = [
    (r"^encoder\.ln_post\.", "encoder.layer_norm."),
    (r"^decoder\.ln\.", "decoder.layer_norm."),
    (r"^encoder\.positional_embedding$", "encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "decoder.embed_tokens."),
    (r"\.blocks\.(\d+)\.", r".layers.\1."),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn\.", ".self_attn."),
    (r"\.query\.", ".q_proj."),
    (r"\.key\.", ".k_proj."),
    (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
    (r"\.mlp\.0\.", ".fc1."),
    (r"\.mlp\.2\.", ".fc2."),
]


def _rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def hf_to_openai(name: str) -> str | None:
    """The OpenAI name of an HF Whisper weight; None for weights OpenAI does not keep (proj_out)."""
    if name.startswith("proj_out."):
        return None  # tied to the token embedding
    return _rename(name.removeprefix("model."), _RENAMES)


def openai_to_hf(name: str) -> str:
    """The HF transformers name of an OpenAI Whisper weight."""
    return "model." + _rename(name, _INVERSE)


def dims_from_config(config: dict) -> dict[str, int]:
    """openai-whisper dims from an HF WhisperConfig dict."""
    return {
        "n_mels": config["num_mel_bins"],
        "n_audio_ctx": config["max_source_positions"],
        "n_audio_state": config["d_model"],
        "n_audio_head": config["encoder_attention_heads"],
        "n_audio_layer": config["encoder_layers"],
        "n_vocab": config["vocab_size"],
        "n_text_ctx": config["max_target_positions"],
        "n_text_state": config["d_model"],
        "n_text_head": config["decoder_attention_heads"],
        "n_text_layer": config["decoder_layers"],
    }


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from whisper_mlx import runtime  # noqa: F401  (BLAS preload before mlx.core)
    import mlx.core as mx

    try:
        arrays = mx.load(str(path))
    except Exception as e:
        raise SourceError(f"{path}: cannot read safetensors ({e})") from None
    out = {}
    for name, a in arrays.items():
        if a.dtype == mx.bfloat16:
            a = a.astype(mx.float32)
        out[name] = np.array(a)
    return out


def load(path: str | Path, sha256: dict[str, str] | None = None) -> Checkpoint:
    """Read an HF Whisper directory; `sha256` maps file names to expected digests."""
    root = Path(path).expanduser()
    config_path = root / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{config_path}: missing (not a transformers Whisper directory)")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise SourceError(f"{root}: no *.safetensors weights")
    sha256 = sha256 or {}
    hashes = {p.name: verify_sha256(p, sha256.get(p.name)) for p in [config_path, *files]}
    try:
        config = json.loads(config_path.read_text())
        dims = {k: int(v) for k, v in dims_from_config(config).items()}
    except json.JSONDecodeError as e:
        raise SourceError(f"{config_path}: not valid JSON ({e})") from None
    except KeyError as e:
        raise SourceError(f"{config_path}: missing field {e.args[0]!r}") from None
    sd = {}
    for file in files:
        for name, array in _read_safetensors(file).items():
            if (new := hf_to_openai(name)) is not None:
                sd[new] = array
    heads = None
    gen = root / "generation_config.json"
    if gen.is_file():
        heads = json.loads(gen.read_text()).get("alignment_heads") or None
    provenance = {"kind": KIND, "location": str(root), "sha256": hashes}
    return Checkpoint(state_dict=sd, dims=dims, alignment_heads=heads, provenance=provenance)
