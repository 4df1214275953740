"""OpenAI's published checkpoints: download (resumable, with progress), verify sha256, cache.

Cache: $WHISPER_MLX_CHECKPOINTS, else $XDG_CACHE_HOME/whisper-mlx/checkpoints (~/.cache/...).
A download whose sha256 differs from the manifest's is deleted and refused.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from . import pt
from .checkpoint import Checkpoint, SourceError, sha256_file

KIND = "openai"
CACHE_ENV = "WHISPER_MLX_CHECKPOINTS"


def cache_dir() -> Path:
    """Where downloaded checkpoints live."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "whisper-mlx" / "checkpoints"


def cached_path(url: str, sha256: str) -> Path:
    """The cache location of a URL's file (its sha256 names the folder)."""
    return cache_dir() / sha256 / url.rstrip("/").rsplit("/", 1)[-1]


def available(url: str, sha256: str) -> bool:
    """True when the checkpoint is already in the cache (no network needed)."""
    return cached_path(url, sha256).is_file()


def download(url: str, sha256: str, dest: Path | None = None, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` (default: the cache), resuming a partial file; verify its sha256."""
    dest = Path(dest) if dest else cached_path(url, sha256)
    if dest.is_file():
        if sha256_file(dest) == sha256:
            return dest
        dest.unlink()  # a corrupted cache entry: fetch again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have > 0 and getattr(response, "status", 200) == 206
            if not resumed:
                have = 0
            total = response.headers.get("Content-Length")
            total = int(total) + have if total else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, leave=False
            ) as bar:
                while block := response.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is not a prefix the server knows: start over
            part.unlink(missing_ok=True)
            return download(url, sha256, dest, timeout)
        raise SourceError(f"{KIND} source {url}: cannot download (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SourceError(f"{KIND} source {url}: cannot download ({reason}); offline? use an offline source") from None
    actual = sha256_file(part)
    if actual != sha256:
        part.unlink(missing_ok=True)
        raise SourceError(f"{KIND} source {url}: sha256 mismatch (expected {sha256}, got {actual}); download deleted")
    os.replace(part, dest)
    return dest


def load(url: str, sha256: str) -> Checkpoint:
    """Download (or reuse the cached) OpenAI checkpoint and read it."""
    path = download(url, sha256)
    return pt.load(path, sha256, kind=KIND, location=url)
