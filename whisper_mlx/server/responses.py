"""OpenAI's response shapes: errors, the five response formats of a result, and stream events.

Subtitles come from `whisper_mlx.writers` (the files the command writes for the same result).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from ..tokenizer import LANGUAGES
from ..writers import render
from .requests import AudioRequest, RequestError

_SEGMENT_FIELDS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                   "compression_ratio", "no_speech_prob")


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(body: Any) -> str:
    return json.dumps(body, default=_plain, ensure_ascii=False)


class JSONResponse(Response):
    """JSON that may hold NumPy scalars."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, **fields) -> JSONResponse:
    return JSONResponse(error_body(message, **fields), status_code=status)


def request_error_response(e: RequestError) -> JSONResponse:
    return error_response(e.status, e.message, type=e.type, param=e.param, code=e.code)


def result_response(request: AudioRequest, result: dict, duration: float | None) -> Response:
    """The transcription or translation `result` (transcribe's dict) in the requested format."""
    fmt = request.response_format
    text = result["text"].strip()
    if duration is None:  # the container did not say: the end of the last segment
        duration = result["segments"][-1]["end"] if result["segments"] else 0.0
    usage = {"type": "duration", "seconds": round(duration, 3)}
    if fmt == "json":
        return JSONResponse({"text": text, "usage": usage})
    if fmt == "text":
        return Response(text + "\n", media_type="text/plain; charset=utf-8")
    if fmt in ("srt", "vtt"):
        return Response(render(fmt, result), media_type="text/plain; charset=utf-8")
    body: dict[str, Any] = {
        "task": "translate" if request.task == "translate" else "transcribe",
        "language": "english" if request.task == "translate" else LANGUAGES.get(result["language"], result["language"]),
        "duration": round(duration, 3),
        "text": text,
    }
    if request.segments:
        body["segments"] = [{key: segment[key] for key in _SEGMENT_FIELDS} for segment in result["segments"]]
    if request.words:
        body["words"] = [
            {"word": word["word"].strip(), "start": word["start"], "end": word["end"],
             "probability": word["probability"]}
            for segment in result["segments"] for word in segment.get("words", ())
        ]
    body["usage"] = usage
    return JSONResponse(body)


def sse(event: dict) -> bytes:
    """One server-sent event carrying `event` as JSON."""
    return f"data: {dumps(event)}\n\n".encode("utf-8")


def delta_event(text: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": text})


def done_event(text: str) -> bytes:
    return sse({"type": "transcript.text.done", "text": text})
