"""What a request may ask for, checked at the edge: the multipart form's fields (OpenAI's names and
values), the served model, and the uploaded audio, saved to a file of the server's own naming.

Every problem is a `RequestError`: an HTTP status and one line naming the field and the problem.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

import av
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..tokenizer import LANGUAGES, TO_LANGUAGE_CODE

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_LIST_FIELDS = ("timestamp_granularities",)  # sent as `timestamp_granularities[]` by OpenAI's clients
_SPECIAL_TOKEN = re.compile(r"<\|[^|]*\|>")


class RequestError(Exception):
    """A request the server refuses: status, message, and OpenAI's error `type`, `param`, `code`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


class _AudioForm(BaseModel):
    """The form fields of both endpoints (OpenAI's names); the endpoint narrows them below."""

    model_config = ConfigDict(extra="forbid")

    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    timestamp_granularities: list[Literal["word", "segment"]] = ["segment"]
    stream: bool = False


_TRANSLATION_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature"}


@dataclass(frozen=True)
class AudioRequest:
    """A validated request: what to run and how to answer."""

    task: Literal["transcribe", "translate"]
    model: str
    response_format: str
    temperature: float
    language: str | None  # a code (en, de, ...); None: detect
    prompt: str | None
    words: bool  # word timestamps asked for
    segments: bool  # segments in verbose_json
    stream: bool

    def transcribe_options(self) -> dict[str, Any]:
        """Keyword arguments for `whisper_mlx.transcribe` (besides the audio and the model).

        `temperature` is where fallback starts: it rises in steps of 0.2 up to 1.0 when a window's
        decoding fails the thresholds (openai-whisper's command line does the same).
        """
        steps = int((1.0 - self.temperature) / 0.2 + 1e-9)
        temperatures = tuple(round(self.temperature + 0.2 * i, 10) for i in range(steps + 1))
        return {
            "temperature": temperatures,
            "language": self.language,
            "task": self.task,
            "initial_prompt": self.prompt,
            "word_timestamps": self.words,
        }


def parse_form(items: list[tuple[str, Any]], task: str, served: set[str]) -> tuple[AudioRequest, Any]:
    """The validated request and the upload (starlette's UploadFile) from the form's (key, value) items."""
    uploads = [value for key, value in items if key == "file"]
    if not uploads:
        raise RequestError(400, "file: missing; send the audio as a multipart file field named `file`", param="file")
    if len(uploads) > 1:
        raise RequestError(400, "file: given more than once; send one audio file per request", param="file")
    if isinstance(uploads[0], str):
        raise RequestError(400, "file: expected a file upload, got a text field", param="file")

    fields: dict[str, Any] = {}
    for key, value in items:
        if key == "file":
            continue
        name = key[:-2] if key.endswith("[]") else key
        if not isinstance(value, str):
            raise RequestError(400, f"{name}: expected a text field, got a file", param=name)
        if task == "translate" and name not in _TRANSLATION_FIELDS:
            raise RequestError(400, f"{name}: not a parameter of audio translations", param=name)
        if name in _LIST_FIELDS:
            fields.setdefault(name, []).append(value)
        elif name in fields:
            raise RequestError(400, f"{name}: given more than once", param=name)
        elif value != "" or name == "model":  # an empty optional field (curl -F language=) is no field
            fields[name] = value
    try:
        form = _AudioForm.model_validate(fields)
    except ValidationError as e:
        error = e.errors()[0]
        param = ".".join(str(part) for part in error["loc"][:1]) or None
        problem = error["msg"]
        if error["type"] == "extra_forbidden":
            problem = "not a parameter of audio transcriptions"
        elif error["type"] == "missing":
            problem = "missing"
        elif "input" in error and error["type"] not in ("missing",):
            problem = f"{problem}, got {error['input']!r}"
        raise RequestError(400, f"{param}: {problem}", param=param) from None

    if form.model not in served:
        raise RequestError(
            400, f"model: {form.model!r} is not served here; this server serves {', '.join(sorted(served))}",
            param="model", code="model_not_found",
        )
    language = None
    if form.language is not None:
        language = TO_LANGUAGE_CODE.get(form.language.lower(), form.language.lower())
        if language not in LANGUAGES:
            raise RequestError(400, f"language: unknown language {form.language!r}; give an ISO-639-1 code such "
                               "as 'en' or a name such as 'English'", param="language")
    if form.prompt is not None and _SPECIAL_TOKEN.search(form.prompt):
        raise RequestError(400, f"prompt: contains special-token text {_SPECIAL_TOKEN.search(form.prompt)[0]!r}",
                           param="prompt")
    if form.stream and form.response_format not in ("json", "text"):
        raise RequestError(400, f"stream: a stream carries text events; response_format {form.response_format!r} "
                           "cannot be streamed (use json or text)", param="stream")
    granularities = set(form.timestamp_granularities)
    request = AudioRequest(
        task="translate" if task == "translate" else "transcribe",
        model=form.model,
        response_format=form.response_format,
        temperature=form.temperature,
        language=language,
        prompt=form.prompt,
        words="word" in granularities,
        segments="segment" in granularities or "timestamp_granularities" not in fields,
        stream=form.stream,
    )
    return request, uploads[0]


def display_name(filename: str | None) -> str:
    """The upload's name as shown in messages: the client's base name, printable, at most 100
    characters. Only ever shown, never used to open anything."""
    name = os.path.basename((filename or "").replace("\\", "/"))
    name = "".join(c if c.isprintable() else "?" for c in name)[:100]
    return f"file {name!r}" if name else "the uploaded file"


def save_upload(source, directory: str) -> str:
    """Copy the upload (a file object) to a new file in `directory`, named by the server; its path."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except BaseException:
        os.unlink(path)
        raise
    return path


def inspect_audio(path: str, name: str) -> float | None:
    """Check the saved upload is audio FFmpeg can open, not cut off; its declared duration in
    seconds (None when the container does not say). RequestError (400) naming `name` otherwise."""
    if os.path.getsize(path) == 0:
        raise RequestError(400, f"{name}: empty file (0 bytes)", param="file", code="invalid_audio")
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise RequestError(400, f"{name}: has no audio stream", param="file", code="invalid_audio")
            duration = None if container.duration is None else container.duration / av.time_base
            if container.format.name == "mp3":
                _check_mp3_complete(container, name)
    except av.FFmpegError as e:
        problem = ("not a recognized audio or video file (unknown format or corrupt header)"
                   if isinstance(e, av.InvalidDataError) else f"cannot be read ({e.strerror or type(e).__name__})")
        raise RequestError(400, f"{name}: {problem}", param="file", code="invalid_audio") from None
    return duration


# MPEG audio layer III frame sizes: bitrates (kbit/s) by index, sample rates by version.
_MP3_BITRATES = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2
    0: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2.5
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _check_mp3_complete(container, name: str) -> None:
    """An MP3 whose last frame is shorter than its header declares was cut off (a download or copy
    that stopped early); FFmpeg decodes what is there without complaint, so say so here."""
    last = None
    for packet in container.demux(container.streams.audio[0]):
        if packet.size:
            last = bytes(packet)
    if last is None:
        raise RequestError(400, f"{name}: contains no audio frames", param="file", code="invalid_audio")
    expected = _mp3_frame_length(last[:4])
    if expected is not None and len(last) < expected:
        raise RequestError(
            400, f"{name}: truncated MP3: its last frame holds {len(last)} of {expected} bytes (the file was cut off)",
            param="file", code="invalid_audio",
        )


def _mp3_frame_length(header: bytes) -> int | None:
    """Bytes in the layer III frame this 4-byte header starts; None for anything else."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved, not layer III, free-format or invalid
    bitrate = _MP3_BITRATES[version][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    return (144 if version == 3 else 72) * bitrate // rate + padding
