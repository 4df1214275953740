"""Reference speech clips: text we wrote, synthesized locally with espeak-ng or flite.

The clip set is declared in `clips.yaml`; `make_clips` renders the requested clips as 16 kHz mono
s16 WAV files, cached by a hash of what determines the audio, so repeated runs reuse them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .yamlfile import YamlFileError, load_yaml

CLIPS_YAML = Path(__file__).with_name("clips.yaml")
SPLITS = ("parity", "heldout", "multilingual", "bench")
_ON_REQUEST = ("bench",)  # splits generated only when asked for by id
_FLITE_PACE = 175.0  # flite's own speaking rate, in words per minute
_CACHE_VERSION = "1"  # bump when the rendering pipeline changes


class SpeechError(RuntimeError):
    """A clip could not be declared or synthesized."""


@dataclass(frozen=True)
class Clip:
    """One synthesized clip and its known truth."""

    id: str
    path: Path
    text: str
    language: str
    split: str
    engine: str
    voice: str
    translation: str | None = None


class ClipSpec(BaseModel):
    """One clip as declared in clips.yaml."""

    model_config = ConfigDict(extra="forbid")

    id: str
    split: Literal["parity", "heldout", "multilingual", "bench"]
    engine: Literal["espeak-ng", "flite"]
    voice: str
    speed: int = 150
    language: str
    text: str | None = None
    concat: list[str] | None = None
    translation: str | None = None

    @model_validator(mode="after")
    def _one_text(self) -> "ClipSpec":
        if (self.text is None) == (self.concat is None):
            raise ValueError("give exactly one of `text` or `concat`")
        return self


class ClipSet(BaseModel):
    """The whole clips.yaml file."""

    model_config = ConfigDict(extra="forbid")

    clips: list[ClipSpec]


def load_specs(path: Path = CLIPS_YAML) -> dict[str, ClipSpec]:
    """Read and validate the clip declarations; `concat` references must name declared clips."""
    try:
        clip_set = ClipSet.model_validate(load_yaml(path))
    except YamlFileError as e:
        raise SpeechError(str(e)) from None
    except ValidationError as e:
        err = e.errors()[0]
        raise SpeechError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    specs: dict[str, ClipSpec] = {}
    for spec in clip_set.clips:
        if spec.id in specs:
            raise SpeechError(f"{path}: duplicate clip id {spec.id!r}")
        specs[spec.id] = spec
    for spec in specs.values():
        for ref in spec.concat or []:
            if ref not in specs or specs[ref].text is None:
                raise SpeechError(f"{path}: clip {spec.id!r}: concat names unknown clip {ref!r}")
    return specs


def clip_text(spec: ClipSpec, specs: dict[str, ClipSpec]) -> str:
    """The words spoken in a clip (a `concat` clip speaks the listed texts in order)."""
    if spec.text is not None:
        return " ".join(spec.text.split())
    return " ".join(" ".join(specs[ref].text.split()) for ref in spec.concat)  # type: ignore[union-attr]


def make_clips(
    out_dir: Path, ids: list[str] | None = None, specs_path: Path = CLIPS_YAML
) -> dict[str, Clip]:
    """Synthesize the clips named by `ids` (default: all but the bench split) into `out_dir`."""
    specs = load_specs(specs_path)
    if ids is None:
        ids = [i for i, s in specs.items() if s.split not in _ON_REQUEST]
    unknown = [i for i in ids if i not in specs]
    if unknown:
        raise SpeechError(f"{specs_path}: no clip with id {', '.join(map(repr, unknown))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips: dict[str, Clip] = {}
    for clip_id in ids:
        spec = specs[clip_id]
        text = clip_text(spec, specs)
        path = out_dir / f"{clip_id}-{_cache_key(spec, text)}.wav"
        if not path.exists():
            _synthesize(spec.engine, spec.voice, spec.speed, text, path)
        clips[clip_id] = Clip(
            id=clip_id,
            path=path,
            text=text,
            language=spec.language,
            split=spec.split,
            engine=spec.engine,
            voice=spec.voice,
            translation=" ".join(spec.translation.split()) if spec.translation else None,
        )
    return clips


def _cache_key(spec: ClipSpec, text: str) -> str:
    """A short hash of everything that determines the rendered audio."""
    blob = "\0".join([_CACHE_VERSION, spec.engine, spec.voice, str(spec.speed), text])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _synthesize(engine: str, voice: str, speed: int, text: str, path: Path) -> None:
    """Render `text` to a 16 kHz mono s16 WAV at `path`, atomically (temp dir + rename)."""
    for tool in (engine, "sox"):
        if shutil.which(tool) is None:
            raise SpeechError(f"{path}: `{tool}` is not installed (needed to synthesize speech)")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".speech-") as tmp:
        raw, final = Path(tmp) / "raw.wav", Path(tmp) / "final.wav"
        if engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text]
        else:
            stretch = f"{_FLITE_PACE / speed:.3f}"
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}",
                   "-t", text, "-o", str(raw)]
        _run(cmd, path)
        _run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer",
              str(final)], path)
        os.replace(final, path)


def _run(cmd: list[str], path: Path) -> None:
    """Run one synthesis step; a failure names the clip file and the tool's complaint."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise SpeechError(f"{path}: {cmd[0]} failed: {err[-1] if err else proc.returncode}")
