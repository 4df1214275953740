"""Models and their workers: an LRU of loaded models, one worker thread per served model.

Each served model has a queue of jobs and one thread draining it, so requests for one model run
one after another while different models run side by side. The worker takes every job waiting
in its queue at once (`ModelWorker._drain`) and hands the list to `_process`: one by one through
`whisper_mlx.transcribe`, or (batch size above 1) together through the batched decoder.

A job talks back to the request that made it through its event channel: ("segment", dict) for
each finished segment, then exactly one of ("done", result), ("error", exception).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("whisper_mlx.server")

_STOP = object()  # put on a worker's queue to end its thread


class Cancelled(Exception):
    """Raised inside a running transcription whose request has gone (timeout or disconnect)."""


class ModelUnavailable(RuntimeError):
    """A served model could not be loaded; the message names it and the loader's problem."""


@dataclass
class Job:
    """One request's transcription: the uploaded file (owned by the job: deleted when it ends),
    `transcribe` keyword arguments, and the channel its events go back on."""

    model: str
    path: str
    options: dict
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    check: Callable[[Any], None] | None = None  # model-dependent validation, run once it is loaded

    def post(self, kind: str, payload: Any) -> None:
        """Send an event to the request's event loop (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass

    def cancel(self) -> None:
        """The request has gone: skip the job if queued, stop it at its next segment if running."""
        self.cancelled.set()

    def release(self) -> None:
        """Delete the uploaded file."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ModelPool:
    """Models loaded on first use, at most `max_loaded` kept (least recently used dropped first).

    A dropped model stays alive while a worker still holds it for a running job; its memory is
    freed when that job ends.
    """

    def __init__(self, sources: dict[str, str], max_loaded: int, loader: Callable[[str], Any] | None = None):
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.sources = dict(sources)
        self.max_loaded = max_loaded
        self._loader = loader
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        """The loaded model served as `name`, loading it (and dropping the oldest) if needed."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
        model = self._load(name)  # outside the lock: other models keep serving while this loads
        with self._lock:
            self._loaded[name] = model
            self._loaded.move_to_end(name)
            while len(self._loaded) > self.max_loaded:
                dropped, _ = self._loaded.popitem(last=False)
                log.info("model %s unloaded (--max-loaded %d)", dropped, self.max_loaded)
        return model

    def loaded(self) -> list[str]:
        """Names of the models loaded now, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def _load(self, name: str) -> Any:
        source = self.sources[name]
        loader = self._loader
        if loader is None:
            from ..load import load_model as loader
        log.info("loading model %s from %s", name, source)
        try:
            return loader(source)
        except Exception as e:  # ModelLoadError, a Hub failure, bad weights: the request says which
            raise ModelUnavailable(f"model {name!r} could not be loaded: {' '.join(str(e).split())}") from e


class ModelWorker:
    """The thread that runs one served model's jobs, in arrival order.

    With `batch_size` 1 each job goes through `run` (whisper_mlx.transcribe: the sequential loop,
    segments forwarded as they are decoded). With more, the jobs drained together that share their
    options go through `run_many` (whisper_mlx.batched.transcribe_many) as one call whose batches
    of `batch_size` rows mix their windows; a job's segments are forwarded when its input is done.
    Jobs with a prompt always take the sequential loop (the batched decoder carries no prompt).
    """

    def __init__(self, name: str, pool: ModelPool, run: Callable[..., dict], *, batch_size: int = 1,
                 run_many: Callable[..., Any] | None = None):
        if batch_size > 1 and run_many is None:
            raise ValueError("batch_size > 1 needs run_many")
        self.name = name
        self.pool = pool
        self._run = run  # whisper_mlx.transcribe, or a stand-in in unit tests
        self._run_many = run_many
        self.batch_size = batch_size
        self._jobs: queue.Queue = queue.Queue()
        self._unfinished = 0  # submitted jobs not yet ended (queued or running)
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"whisper-mlx-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._count_lock:
            self._unfinished += 1
        self._jobs.put(job)

    def unfinished(self) -> int:
        """Jobs queued or running."""
        with self._count_lock:
            return self._unfinished

    def _ended(self, job: Job) -> None:
        job.release()
        with self._count_lock:
            self._unfinished -= 1

    def stop(self, timeout: float) -> None:
        """Finish the running job, drop queued ones, end the thread (waits at most `timeout` s)."""
        self._jobs.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            jobs = self._drain()
            stop = _STOP in jobs
            jobs = [job for job in jobs if job is not _STOP]
            if stop:
                for job in jobs:
                    job.post("error", Cancelled("the server is shutting down"))
                    self._ended(job)
                return
            self._process(jobs)

    def _drain(self) -> list:
        """The next job (waiting for one), plus every other job already queued."""
        jobs = [self._jobs.get()]
        while True:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                return jobs

    def _process(self, jobs: list[Job]) -> None:
        """Run the jobs drained together: each through `run`, or in groups through `run_many`."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if self.batch_size > 1 and job.options.get("initial_prompt") is None:
                groups.setdefault(tuple(sorted(job.options.items())), []).append(job)
            else:
                groups[(id(job),)] = [job]  # on its own, in arrival order among the groups
        for group in groups.values():
            if self.batch_size > 1 and group[0].options.get("initial_prompt") is None:
                self._run_group(group)
            else:
                self._run_one(group[0])

    def _ready(self, job: Job) -> Any:
        """The model for a job about to run (Cancelled, ModelUnavailable or the job's check otherwise)."""
        if job.cancelled.is_set():
            raise Cancelled("the request ended before its turn")
        model = self.pool.get(job.model)
        if job.check is not None:
            job.check(model)
        return model

    def _run_one(self, job: Job) -> None:
        try:
            model = self._ready(job)
            result = self._run(job.path, model=model, on_segment=self._forward(job), **job.options)
        except Exception as e:  # every failure goes back to its request, the worker carries on
            job.post("error", e)
        else:
            job.post("done", result)
        finally:
            self._ended(job)

    def _run_group(self, group: list[Job]) -> None:
        ready: list[tuple[Job, Any]] = []
        for job in group:
            try:
                ready.append((job, self._ready(job)))
            except Exception as e:
                job.post("error", e)
                self._ended(job)
        if not ready:
            return
        jobs, model = [job for job, _ in ready], ready[0][1]
        options = {k: v for k, v in jobs[0].options.items() if k != "initial_prompt"}
        if len(jobs) > 1:
            log.info("model %s: %d requests decoded together", self.name, len(jobs))
        pending = set(range(len(jobs)))
        try:
            for index, _, result in self._run_many([job.path for job in jobs], model=model,
                                                   batch_size=self.batch_size, **options):
                job = jobs[index]
                if isinstance(result, Exception):
                    job.post("error", result)
                else:
                    for segment in result["segments"]:
                        job.post("segment", segment)
                    job.post("done", result)
                pending.discard(index)
                self._ended(job)
        except Exception as e:  # the batch failed as a whole: every job still waiting hears why
            for index in pending:
                jobs[index].post("error", e)
        finally:
            for index in pending:
                self._ended(jobs[index])

    @staticmethod
    def _forward(job: Job) -> Callable[[dict], None]:
        def on_segment(segment: dict) -> None:
            if job.cancelled.is_set():
                raise Cancelled("the request ended while it was being transcribed")
            job.post("segment", segment)

        return on_segment
