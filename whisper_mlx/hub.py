"""Turn a Hub repo id or a zoo short name into a local model directory (downloaded through the HF cache).

`load.resolve` handles local paths and calls `resolve_remote` for anything else. A repo id (`org/name`)
is fetched with `huggingface_hub.snapshot_download` (honouring HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE and
the token), only the files the runtime reads; a short name (`tiny.en-4bit`) is looked up in
`assets/registry.json` (generated from the zoo's manifests) first.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from pathlib import Path

from .load import ModelLoadError

REGISTRY_PATH = Path(__file__).with_name("assets") / "registry.json"
# What the runtime reads (docs/FORMAT.md); the model card comes along since it is small and useful.
RUNTIME_FILES = ["config.json", "weights.safetensors", "weights.npz", "README.md"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(name: str) -> bool:
    """`org/name` as the Hub spells repo ids (no `--` or `..`, no trailing `.`)."""
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name and not name.endswith(".")


@lru_cache(maxsize=None)
def _registry(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        models = data["models"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path}: cannot read the short-name registry ({e})") from None
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
        raise ModelLoadError(f"{path}: field 'models' must map short names to repo ids")
    return models


def registry() -> dict[str, str]:
    """The zoo's short names and their Hub repo ids."""
    return dict(_registry(REGISTRY_PATH))


def resolve_remote(name: str, revision: str | None = None) -> Path:
    """A local directory holding the model `name` names: a Hub repo id, or a zoo short name."""
    if is_repo_id(name):
        return download(name, revision, tried=f"{name!r}: not a local model directory, not a zoo short name")
    repos = registry()
    if name not in repos and f"{name}-fp16" in repos:
        name = f"{name}-fp16"  # a bare family name ("tiny.en") means its fp16 release
    if name in repos:
        return download(repos[name], revision, tried=f"{name!r}: zoo short name for {repos[name]}")
    close = difflib.get_close_matches(name, list(repos), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(repos)} known: see `whisper_mlx.hub.registry()`)"
    raise ModelLoadError(
        f"{name!r}: not a local model directory, not a Hub repo id (org/name), and not a zoo short name{hint}"
    )


def download(repo_id: str, revision: str | None, tried: str) -> Path:
    """Fetch the runtime's files of `repo_id` into the HF cache; errors say what was tried and why it failed."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"Hub repo {repo_id}" + (f" at revision {revision!r}" if revision else "")
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=RUNTIME_FILES))
    except GatedRepoError:
        raise ModelLoadError(f"{tried}; {where} is gated: accept its terms and log in (HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{tried}; {where} not found on {constants.ENDPOINT} (or private without a token)") from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"{tried}; {where}: no such revision on {constants.ENDPOINT}") from None
    except LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else f"{constants.ENDPOINT} is unreachable"
        raise ModelLoadError(f"{tried}; {where} is not in the cache ({constants.HF_HUB_CACHE}) and {reason}") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelLoadError(f"{tried}; {where}: download failed ({type(e).__name__}: {e})") from None
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{where}: no config.json; not a whisper-mlx model (see docs/FORMAT.md)")
    if not any((path / w).is_file() for w in ("weights.safetensors", "weights.npz")):
        raise ModelLoadError(f"{where}: no weights.safetensors or weights.npz")
    return path

