"""The ASGI application: OpenAI's audio endpoints over the model workers.

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, temperature,
                                    response_format, timestamp_granularities[], stream
    POST /v1/audio/translations     multipart: file, model, prompt, temperature, response_format
                                    (and language, the spoken one)
    GET  /v1/models, /v1/models/{id}
    GET  /health                    (no key needed)

Before a request reaches a route, `_Edge` logs it (one line when it ends), checks the bearer key
and bounds the body. Every error is OpenAI's JSON error object; input the server cannot use gets
a 4xx naming the field and the problem, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..audio import AudioError
from .requests import AudioRequest, RequestError, display_name, inspect_audio, parse_form, save_upload
from .responses import (JSONResponse, delta_event, done_event, error_body, error_response, request_error_response,
                        result_response, sse)
from .workers import Cancelled, Job, ModelPool, ModelUnavailable, ModelWorker

log = logging.getLogger("whisper_mlx.server")

_MAX_FIELDS = 32  # form fields a request may carry (OpenAI's parameters number far fewer)


@dataclass
class ServerConfig:
    """What a server serves and its limits."""

    models: dict[str, str]  # model id in requests -> what load_model is given (short name, repo id, directory)
    max_loaded: int = 2  # models kept loaded; the least recently used is dropped past this
    max_upload_mb: float = 25.0  # request bodies larger than this get 413 (OpenAI's limit is 25 MB)
    timeout: float = 600.0  # seconds a request may wait and run before it gets 504
    api_key: str | None = None  # when set, /v1/ requests need `Authorization: Bearer <key>`
    batch_size: int = 1  # above 1: requests queued together are decoded as rows of one batch

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("serve at least one model")
        if self.max_loaded < 1:
            raise ValueError(f"max_loaded: must be at least 1, got {self.max_loaded}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb: must be positive, got {self.max_upload_mb}")
        if not self.timeout > 0:
            raise ValueError(f"timeout: must be positive, got {self.timeout}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {self.batch_size}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class Service:
    """The running server's state: models, workers and the directory uploads are saved in."""

    config: ServerConfig
    pool: ModelPool
    workers: dict[str, ModelWorker]
    upload_dir: str
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, config: ServerConfig, transcribe: Callable[..., dict] | None = None,
              loader: Callable[[str], Any] | None = None) -> "Service":
        if transcribe is None:
            from ..transcribe import transcribe
        run_many = None
        if config.batch_size > 1:
            from ..batched import transcribe_many

            # requests share batches, never a window: one client's audio must not shape another's text
            run_many = functools.partial(transcribe_many, pack=False)
        pool = ModelPool(config.models, config.max_loaded, loader)
        workers = {name: ModelWorker(name, pool, transcribe, batch_size=config.batch_size, run_many=run_many)
                   for name in config.models}
        return cls(config, pool, workers, tempfile.mkdtemp(prefix="whisper-mlx-serve-"))

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop(timeout=5.0)
        shutil.rmtree(self.upload_dir, ignore_errors=True)


# ---------------------------------------------------------------- routes


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({
        "status": "ok",
        "models": list(service.config.models),
        "loaded": service.pool.loaded(),
        "jobs": sum(worker.unfinished() for worker in service.workers.values()),
    })


def _model_object(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "whisper-mlx"}


async def list_models(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({"object": "list", "data": [_model_object(n, int(service.started)) for n in service.config.models]})


async def get_model(request: Request) -> Response:
    service: Service = request.app.state.service
    name = request.path_params["model"]
    if name not in service.config.models:
        return error_response(404, f"model {name!r} is not served here", param="model", code="model_not_found")
    return JSONResponse(_model_object(name, int(service.started)))


async def transcriptions(request: Request) -> Response:
    return await _audio(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _audio(request, "translate")


async def _audio(request: Request, task: str) -> Response:
    service: Service = request.app.state.service
    deadline = time.monotonic() + service.config.timeout
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return error_response(400, "expected a multipart/form-data body with the audio in a field named `file`")
    try:
        async with request.form(max_files=2, max_fields=_MAX_FIELDS) as form:
            audio_request, upload = parse_form(list(form.multi_items()), task, set(service.config.models))
            request.state.model = audio_request.model
            name = display_name(upload.filename)
            path = await run_in_threadpool(save_upload, upload.file, service.upload_dir)
    except RequestError as e:
        return request_error_response(e)
    except BodyTooLarge as e:
        return _too_large(e.limit)
    except (MultiPartException, HTTPException) as e:  # starlette raises the latter for the former
        return error_response(400, f"the multipart body cannot be parsed: {getattr(e, 'detail', None) or e}")

    job = Job(audio_request.model, path, audio_request.transcribe_options(), asyncio.get_running_loop(),
              check=_model_check(audio_request))
    try:
        duration = await run_in_threadpool(inspect_audio, path, name)
    except RequestError as e:
        job.release()
        return request_error_response(e)
    request.state.audio_seconds = duration
    service.workers[audio_request.model].submit(job)
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        first = await _next_event(job, deadline)
        if first[0] == "segment" and audio_request.stream:
            watcher.cancel()  # the streaming response watches for the client going away itself
            return StreamingResponse(_stream(job, first, deadline, name, path, service.config.timeout),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        event = first
        while event[0] == "segment":
            event = await _next_event(job, deadline)
    except asyncio.CancelledError:
        job.cancel()
        raise
    finally:
        watcher.cancel()
    if event[0] == "error":
        return _job_error_response(event[1], name, path)
    if event[0] == "timeout":
        return _timeout_response(service.config.timeout)
    if audio_request.stream:  # finished before its first segment (silence): the stream is the done event
        return StreamingResponse(_stream(job, event, deadline, name, path, service.config.timeout),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return result_response(audio_request, event[1], duration)


def _model_check(request: AudioRequest) -> Callable[[Any], None]:
    """What can only be checked once the model is loaded: English-only models neither translate
    nor hear other languages."""

    def check(model) -> None:
        if getattr(model, "is_multilingual", True):
            return
        if request.task == "translate":
            raise RequestError(400, f"model: {request.model!r} is English-only and cannot translate; "
                               "use a multilingual model", param="model")
        if request.language not in (None, "en"):
            raise RequestError(400, f"language: {request.model!r} is English-only; got language "
                               f"{request.language!r}", param="language")

    return check


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel the job when the client goes away (its body has been read: what comes next is the
    disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


async def _next_event(job: Job, deadline: float) -> tuple[str, Any]:
    """The job's next event, or ("timeout", None) once the deadline passes (the job is cancelled)."""
    try:
        return await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        job.cancel()
        return ("timeout", None)


async def _stream(job: Job, first: tuple[str, Any], deadline: float, name: str, path: str,
                  timeout: float) -> AsyncIterator[bytes]:
    """Server-sent events: a `transcript.text.delta` per segment, then `transcript.text.done`.

    The deltas add up to the done event's text (the same text `json` answers with)."""
    sent = ""
    event = first
    try:
        while True:
            kind, payload = event
            if kind == "segment":
                text = payload["text"] if sent else payload["text"].lstrip()
                if text:
                    sent += text
                    yield delta_event(text)
            elif kind == "done":
                final = payload["text"].strip()
                if final.startswith(sent) and final != sent:
                    yield delta_event(final[len(sent):])
                yield done_event(final)
                return
            elif kind == "error":
                yield sse(_job_error(payload, name, path)[1])
                return
            else:
                yield sse(error_body(f"the request took longer than the server's limit of {timeout:g} s",
                                     type="timeout_error", code="timeout"))
                return
            event = await _next_event(job, deadline)
    finally:
        job.cancel()  # the client went away mid-stream (or the stream ended): stop at the next segment


def _job_error(e: BaseException, name: str, path: str) -> tuple[int, dict]:
    """Status and OpenAI error body for what a job raised."""
    if isinstance(e, RequestError):
        return e.status, error_body(e.message, type=e.type, param=e.param, code=e.code)
    if isinstance(e, AudioError):
        message = " ".join(str(e).replace(path, name).split())
        if not message.startswith(name):
            message = f"{name}: {message}"
        return 400, error_body(message, param="file", code="invalid_audio")
    if isinstance(e, ModelUnavailable):
        log.error("%s", e)
        return 503, error_body(str(e), type="server_error", code="model_unavailable")
    if isinstance(e, Cancelled):
        return 503, error_body(f"request not completed: {e}", type="server_error", code="cancelled")
    log.error("transcription of %s failed", name, exc_info=e)
    return 500, error_body(f"internal error while transcribing {name} ({type(e).__name__}); see the server log",
                           type="server_error")


def _job_error_response(e: BaseException, name: str, path: str) -> Response:
    status, body = _job_error(e, name, path)
    return JSONResponse(body, status_code=status)


def _timeout_response(timeout: float) -> Response:
    return error_response(504, f"the request took longer than the server's limit of {timeout:g} s (--timeout)",
                          type="timeout_error", code="timeout")


def _too_large(limit: int) -> Response:
    return error_response(413, f"the upload is larger than this server's limit of {limit / 1048576:g} MiB "
                          "(--max-upload-mb)", param="file", code="file_too_large")


# ---------------------------------------------------------------- the edge


class BodyTooLarge(Exception):
    """Raised by the body-limited `receive` once a request body passes the limit."""

    def __init__(self, limit: int):
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class _Edge:
    """Pure ASGI middleware: one log line per request, the bearer key, the body size limit."""

    def __init__(self, app, service_of: Callable[[], Service]):
        self.app = app
        self.service_of = service_of

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [0]
        scope.setdefault("state", {})

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_logged)
        finally:
            state = scope["state"]
            seconds = state.get("audio_seconds")
            path = "".join(c if c.isprintable() and c != " " else f"%{ord(c):02X}" for c in scope["path"])
            log.info("%s %s model=%s audio_s=%s wall_s=%.3f status=%s", scope["method"], path,
                     state.get("model", "-"), "-" if seconds is None else f"{seconds:.2f}",
                     time.perf_counter() - started, status[0] or "-")

    async def _handle(self, scope, receive, send) -> None:
        config = self.service_of().config
        if config.api_key is not None and scope["path"].startswith("/v1/"):
            problem = _key_problem(scope, config.api_key)
            if problem is not None:
                response = error_response(401, problem, code="invalid_api_key")
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        if scope["method"] == "POST":
            limit = config.max_upload_bytes
            length = _header(scope, b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                if not length.isdigit():
                    return await error_response(400, f"Content-Length: not a byte count: {length!r}")(
                        scope, receive, send)
                return await _too_large(limit)(scope, receive, send)
            receive = _limited(receive, limit)
        await self.app(scope, receive, send)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _key_problem(scope, key: str) -> str | None:
    given = _header(scope, b"authorization")
    if not given:
        return "no API key given; send `Authorization: Bearer <key>`"
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        return "incorrect API key"
    return None


def _limited(receive, limit: int):
    """`receive` that raises BodyTooLarge once more than `limit` body bytes have arrived."""
    received = 0

    async def limited_receive():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return limited_receive


# ---------------------------------------------------------------- the app


async def _not_found(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log", type="server_error")


def create_app(config: ServerConfig, *, transcribe: Callable[..., dict] | None = None,
               loader: Callable[[str], Any] | None = None, service: Service | None = None) -> Starlette:
    """The ASGI app serving `config`. Its models and workers start with the app (lifespan) unless
    a started `service` is given; `transcribe` and `loader` replace whisper_mlx's (unit tests)."""
    holder: dict[str, Service] = {}
    if service is not None:
        holder["service"] = service

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        own = "service" not in holder
        if own:
            holder["service"] = Service.start(config, transcribe, loader)
        app.state.service = holder["service"]
        try:
            yield
        finally:
            if own:
                holder.pop("service").stop()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", translations, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _not_found, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.add_middleware(_Edge, service_of=lambda: holder["service"])
    return app
