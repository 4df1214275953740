"""Hugging Face transformers Whisper checkpoints → Checkpoint: a local directory, or a Hub repo at
a commit, downloaded through huggingface_hub (its cache, HF_ENDPOINT, HF_HUB_OFFLINE and token).

The files read are the ones transformers reads: config.json (mapped to openai-whisper's dims and
checked to describe Whisper's architecture), generation_config.json where there is one (its
`alignment_heads`), and the weights: model.safetensors.index.json and its shards, or
model.safetensors; only where neither exists, pytorch_model.bin.index.json and its shards, or
pytorch_model.bin. Every file's sha256 is checked against the digests the source is read against;
a pickle (.bin) is unpickled, with torch.load(weights_only=True), only after its sha256 matched a
pinned digest. Tensor names are mapped to openai-whisper's, and the result must hold exactly
openai-whisper's tensors for the dims, in their shapes.

Safetensors are read with mlx (no torch, no transformers needed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, SourceError, combined_sha256, sha256_file, sinusoids, state_dict_problem

KIND = "transformers"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
# in transformers' order of preference: safetensors (sharded, single), then pickles (sharded, single)
WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")

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
# OpenAI name → HF name, for writing HF-format checkpoints (tests, interop) and for messages
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


def config_problem(config) -> str | None:
    """Why an HF config.json does not describe openai-whisper's architecture, or None.
    Fields it leaves out take WhisperConfig's defaults, as transformers gives them."""
    if not isinstance(config, dict):
        return "not a JSON object"
    if config.get("model_type") != "whisper":
        return f"model_type is {config.get('model_type')!r}, not 'whisper' (not a Whisper checkpoint)"
    try:
        dims = dims_from_config(config)
    except KeyError as e:
        return f"missing field {e.args[0]!r}"
    bad = [k for k, v in dims.items() if type(v) is not int or v <= 0]
    if bad:
        return f"{bad[0]} ({dims[bad[0]]!r}) is not a positive integer"
    for field in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if config.get(field, 1536) != 4 * config["d_model"]:
            return f"{field} is {config.get(field, 1536)}, not 4 x d_model ({4 * config['d_model']}) as in Whisper"
    if config.get("activation_function", "gelu") != "gelu":
        return f"activation_function is {config['activation_function']!r}, not Whisper's 'gelu'"
    if config.get("scale_embedding", False):
        return "scale_embedding is true: Whisper does not scale its token embedding"
    return None


@dataclass
class Pin:
    """What a Hub repo is read against: a commit (None: its main branch) and each file's sha256
    (None: nothing to verify against; the build records what it read), and who pinned them."""

    revision: str | None
    sha256: dict[str, str] | None
    origin: str  # "manifest", "recorded by ...", "unpinned", or who else gave them
    # every file read must have a digest here (a manifest's or a record's pin); False: the ones
    # listed are checked (a pickle must be listed), the others recorded
    complete: bool = True


class _LocalFiles:
    """A local transformers directory."""

    def __init__(self, root: Path):
        self.root = root
        self.where = str(root)
        self.revision = None

    def get(self, name: str, required: bool = False) -> Path | None:
        path = self.root / name
        if path.is_file():
            return path
        if required:
            raise SourceError(f"{path}: missing (not a transformers Whisper directory?)")
        return None


class _HubFiles:
    """A Hub repo's files at one commit, through huggingface_hub's cache. The first file read
    resolves the revision to a commit; every later file is read at that commit."""

    def __init__(self, repo: str, revision: str | None, local_only: bool = False):
        self.repo, self.requested, self.local_only = repo, revision or "main", local_only
        # the commit, once known (a branch or tag given resolves at the first file read)
        self.revision = revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None

    @property
    def where(self) -> str:
        at = self.revision or self.requested
        return f"Hub repo {self.repo}@{at}"

    def get(self, name: str, required: bool = False) -> Path | None:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        revision = self.revision or self.requested
        if not required and not isinstance(try_to_load_from_cache(self.repo, name, revision=revision), (str, type(None))):
            return None  # the cache knows the file does not exist at this commit
        try:
            path = Path(hf_hub_download(self.repo, name, revision=revision, local_files_only=self.local_only))
        except RemoteEntryNotFoundError:
            if required:
                raise SourceError(f"{self.where}: {name}: not in the repo (not a transformers Whisper checkpoint?)") from None
            return None
        except GatedRepoError:
            raise SourceError(f"{self.where}: gated: accept its terms on the Hub and log in (HF_TOKEN)") from None
        except RepositoryNotFoundError:
            raise SourceError(f"{self.where}: no such repo on {constants.ENDPOINT} (or private without a token)") from None
        except RevisionNotFoundError:
            raise SourceError(f"{self.where}: no such revision on {constants.ENDPOINT}") from None
        except LocalEntryNotFoundError:
            if self.local_only and not required:
                return None
            why = ("HF_HUB_OFFLINE is set" if constants.is_offline_mode() else
                   "offline only" if self.local_only else f"{constants.ENDPOINT} is unreachable")
            raise SourceError(f"{self.where}: {name}: not in the cache ({constants.HF_HUB_CACHE}) and {why}") from None
        except (HfHubHTTPError, OSError) as e:
            raise SourceError(f"{self.where}: {name}: download failed ({type(e).__name__}: {e})") from None
        commit = path.parents[len(Path(name).parts) - 1].name  # .../snapshots/<commit>/<name>
        if self.revision is None:
            self.revision = commit
        elif commit != self.revision:
            raise SourceError(f"{self.where}: {name} came from commit {commit}, not {self.revision}")
        return path


def locate(files, config: Path | None = None) -> dict[str, Path]:
    """The files a checkpoint is read from, in reading order: config.json, generation_config.json
    (if any), then the weights (an index first, then its shards)."""
    found = {CONFIG: config or files.get(CONFIG, required=True)}
    if (gen := files.get(GENERATION_CONFIG)) is not None:
        found[GENERATION_CONFIG] = gen
    for name in WEIGHTS:
        path = files.get(name)
        if path is None:
            continue
        found[name] = path
        if name.endswith(".index.json"):
            for shard in _shards(path, files.where):
                found[shard] = files.get(shard, required=True)
        return found
    raise SourceError(f"{files.where}: no weights ({', '.join(WEIGHTS)})")


def _shards(index: Path, where: str) -> list[str]:
    weight_map = _index(index, where)
    return sorted(set(weight_map.values()))


def _index(index: Path, where: str) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{where}: {index.name}: not a weight index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SourceError(f"{where}: {index.name}: weight_map must map tensor names to file names")
    bad = [f for f in weight_map.values() if "/" in f or f.startswith(".")]
    if bad:
        raise SourceError(f"{where}: {index.name}: shard {bad[0]!r} is not a file beside the index")
    return weight_map


def _read_safetensors(path: Path, where: str) -> dict[str, np.ndarray]:
    from whisper_mlx import runtime  # noqa: F401  (BLAS preload before mlx.core)
    import mlx.core as mx

    try:
        arrays = mx.load(str(path))
    except Exception as e:  # mlx raises RuntimeError/ValueError with terse text
        raise SourceError(f"{where}: {path.name}: cannot read safetensors ({e})") from None
    out = {}
    for name, a in arrays.items():
        if a.dtype == mx.bfloat16:
            a = a.astype(mx.float32)
        out[name] = np.array(a)
    return out


def _read_pickle(path: Path, where: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict, read with torch.load(weights_only=True): tensors and plain
    containers only. The caller has verified the file against a pinned digest."""
    import torch  # lazy: only pickled checkpoints need torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise SourceError(f"{where}: {path.name}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise SourceError(f"{where}: {path.name}: not a state dict (a mapping of names to tensors)")
    return {name: (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy() for name, t in raw.items()}


def read(files, expected: dict[str, str] | None, complete: bool, provenance: dict) -> Checkpoint:
    """Read a checkpoint through `files` (local or Hub). `expected`: file name -> sha256 to
    check; `complete`: every file read must be listed there (a pinned source)."""
    expected = expected or {}
    hashes: dict[str, str] = {}
    # config.json first: a checkpoint that is not Whisper's is refused before its weights are
    # fetched; reading it also resolves a Hub branch to the commit every message names
    config_path = files.get(CONFIG, required=True)
    where = files.where

    def verify(name: str, path: Path) -> None:
        digest = sha256_file(path)
        want = expected.get(name)
        if want is not None and digest != want:
            raise SourceError(f"{where}: {name}: sha256 mismatch (expected {want}, got {digest})")
        if want is None and complete:
            raise SourceError(f"{where}: {name}: read but not pinned (its sha256 is {digest}); add it to the digests")
        if want is None and name.endswith(".bin"):
            raise SourceError(f"{where}: {name}: a pickle is unpickled only after its sha256 matched a pinned digest; "
                              f"check this file and pin its sha256 {digest}")
        hashes[name] = digest

    verify(CONFIG, config_path)
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{where}: {CONFIG}: not valid JSON ({e})") from None
    if (problem := config_problem(config)) is not None:
        raise SourceError(f"{where}: {CONFIG}: {problem}")
    dims = dims_from_config(config)

    found = locate(files, config_path)
    for name, path in found.items():
        if name != CONFIG:
            verify(name, path)
    unread = sorted(set(expected) - set(found))
    if unread and complete:
        raise SourceError(f"{where}: {unread[0]}: pinned but not read (not in the checkpoint, or another weights "
                          f"file takes precedence: {', '.join(n for n in found if n not in (CONFIG, GENERATION_CONFIG))})")

    heads = None
    if GENERATION_CONFIG in found:
        try:
            generation = json.loads(found[GENERATION_CONFIG].read_text())
        except (UnicodeDecodeError, ValueError) as e:
            raise SourceError(f"{where}: {GENERATION_CONFIG}: not valid JSON ({e})") from None
        heads = generation.get("alignment_heads") if isinstance(generation, dict) else None

    weights = [n for n in found if n not in (CONFIG, GENERATION_CONFIG)]
    index = _index(found[weights[0]], where) if weights[0].endswith(".index.json") else None
    tensors: dict[str, np.ndarray] = {}
    for name in weights:
        if name.endswith(".index.json"):
            continue
        read_one = _read_pickle if name.endswith(".bin") else _read_safetensors
        part = read_one(found[name], where)
        if index is not None:
            strays = [t for t in part if index.get(t) != name]
            if strays:
                raise SourceError(f"{where}: {name}: holds {strays[0]}, which {weights[0]} does not place there")
        tensors.update(part)
    if index is not None:
        lacking = [t for t in index if t not in tensors]
        if lacking:
            raise SourceError(f"{where}: {index[lacking[0]]}: lacks {lacking[0]}, which {weights[0]} places there")
    shown = weights[0] if index is None else f"{weights[0]} and its shards"

    sd: dict[str, np.ndarray] = {}
    hf_name: dict[str, str] = {}
    proj_out = tensors.pop("proj_out.weight", None)
    for name, array in tensors.items():
        new = hf_to_openai(name)
        sd[new] = array
        hf_name[new] = name
    if "encoder.positional_embedding" not in sd and "encoder.conv1.weight" in sd:
        # a fixed buffer some checkpoints leave out: openai-whisper's sinusoids, as transformers makes them
        sd["encoder.positional_embedding"] = sinusoids(dims["n_audio_ctx"], dims["n_audio_state"]).astype(
            sd["encoder.conv1.weight"].dtype)
    if (problem := state_dict_problem(sd, dims, lambda n: hf_name.get(n) or openai_to_hf(n))) is not None:
        raise SourceError(f"{where}: {shown}: {problem}")
    embedding = sd["decoder.token_embedding.weight"]
    if proj_out is not None and (proj_out.shape != embedding.shape or not np.array_equal(proj_out, embedding)):
        raise SourceError(f"{where}: {shown}: proj_out.weight differs from the token embedding (an untied output "
                          "projection is not openai-whisper's architecture)")
    provenance = {**provenance, "sha256": hashes}
    return Checkpoint(state_dict=sd, dims=dims, alignment_heads=heads, provenance=provenance,
                      alignment_heads_from=GENERATION_CONFIG if heads is not None else None,
                      source_dir=found[CONFIG].parent)


def load(path: str | Path, sha256: dict[str, str] | None = None) -> Checkpoint:
    """Read a local transformers Whisper directory; `sha256` maps file names to expected digests
    (the files it lists are checked; a pickle must be listed)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SourceError(f"{root}: no such directory")
    return read(_LocalFiles(root), sha256, complete=False, provenance={"kind": KIND, "location": str(root)})


def load_hub(repo: str, pin: Pin) -> Checkpoint:
    """Download (or reuse the cached) checkpoint of a Hub repo at the pin's commit and read it
    against the pin's digests (all of them, when pinned)."""
    files = _HubFiles(repo, pin.revision)
    complete = pin.sha256 is not None and pin.complete
    ckpt = read(files, pin.sha256, complete, provenance={"kind": KIND, "location": repo, "repo": repo})
    ckpt.provenance.update(revision=files.revision, pinned=pin.origin)
    return ckpt


def available_hub(repo: str, pin: Pin) -> bool:
    """True when every file the checkpoint is read from is in huggingface_hub's cache."""
    try:
        locate(_HubFiles(repo, pin.revision, local_only=True))
    except SourceError:
        return False
    return True


def fingerprint_dir(path: str | Path, sha256: dict[str, str] | None) -> str:
    """One digest for a local directory's checkpoint: over the manifest's digests, else the files'."""
    if sha256:
        return combined_sha256(sha256)
    found = locate(_LocalFiles(Path(path).expanduser()))
    return combined_sha256({name: sha256_file(p) for name, p in found.items()})
