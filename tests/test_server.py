"""`whisper-mlx serve` (issue 15) through the official `openai` client, as an app would use it.

A server on 127.0.0.1 (a free port) serves tiny.en and the multilingual base from the converted
test directories; what it answers is compared with `whisper_mlx.transcribe` on the same file with
the same options and an equal model (same directory). Bad input gets its 4xx OpenAI error and the
server keeps serving. One test runs the real `whisper-mlx serve` command.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import uvicorn

import whisper_mlx
from whisper_mlx.audio import load_audio
from whisper_mlx.server.app import Service, ServerConfig, create_app
from whisper_mlx.server.workers import Cancelled, Job, ModelPool, ModelWorker
from whisper_mlx.writers import render

from test_bad_input import wer

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
WAIT_S = 60  # bound on every wait for a server to come up or go idle


class RunningServer:
    """A uvicorn server on 127.0.0.1 in a background thread, with its service for inspection."""

    def __init__(self, config: ServerConfig, loader=None):
        self.service = Service.start(config, loader=loader)
        app = create_app(config, service=self.service)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, api_key: str = KEY) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=300)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_idle(self) -> None:
        """Until no job is queued or running (a cancelled job ends at its next segment)."""
        deadline = time.monotonic() + WAIT_S
        while self.get("/health")[1]["jobs"]:
            assert time.monotonic() < deadline, "jobs still unfinished"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)
        self.service.stop()


@pytest.fixture(scope="module")
def server(tiny_en_fp32_dir, base_fp32_dir):
    """tiny.en and base served, one loaded at a time, a 1.5 MiB upload limit, a key."""
    config = ServerConfig(models={"tiny.en": str(tiny_en_fp32_dir), "base": str(base_fp32_dir)},
                          max_loaded=1, max_upload_mb=1.5, api_key=KEY)
    running = RunningServer(config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tiny_en(tiny_en_fp32_dir):
    return whisper_mlx.load_model(tiny_en_fp32_dir)


@pytest.fixture(scope="module")
def reference(tiny_en):
    """whisper_mlx.transcribe on tiny.en with the server's options (cached per file and options)."""
    cache: dict = {}

    def run(path: Path, **options) -> dict:
        key = (str(path), tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = whisper_mlx.transcribe(str(path), model=tiny_en, **options)
        return cache[key]

    return run


@pytest.fixture(scope="module")
def bad_uploads(clips, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad uploads")
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("These are my meeting notes, not a recording.\n")
    mp3 = d / "whole.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clips["en_train"].path), "-c:a", "libmp3lame",
                    "-b:a", "64k", str(mp3)], check=True, timeout=120)
    data = mp3.read_bytes()
    (d / "cut.mp3").write_bytes(data[: len(data) // 2 + 7])  # a download that stopped mid-frame
    (d / "big.wav").write_bytes(b"RIFF" + bytes(3 * 1024 * 1024 // 2 + 100))  # over the 1.5 MiB limit
    return {p.stem: p for p in d.iterdir()}


def _seconds(path: Path) -> float:
    return load_audio(path).size / 16000


def _error(e: "openai.APIStatusError") -> dict:
    """The OpenAI error object of a failed call (and it has exactly OpenAI's four fields)."""
    body = e.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


# ---------------------------------------------------------------- answers equal transcribe's


def test_every_response_format_matches_transcribe(server, clips, reference):
    path = clips["en_train"].path
    client = server.client()
    plain = reference(path)
    with_words = reference(path, word_timestamps=True)

    def ask(**kwargs):
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(model="tiny.en", file=f, **kwargs)

    assert ask().text == plain["text"].strip()
    assert ask(response_format="text") == plain["text"].strip() + "\n"
    assert ask(response_format="srt") == render("srt", plain)
    assert ask(response_format="vtt") == render("vtt", plain)

    verbose = ask(response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.text == with_words["text"].strip()
    assert verbose.language == "english"
    assert verbose.duration == pytest.approx(_seconds(path), abs=0.01)
    fields = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
              "no_speech_prob")
    assert [{f: getattr(s, f) for f in fields} for s in verbose.segments] == \
        [{f: s[f] for f in fields} for s in with_words["segments"]]
    expected_words = [(w["word"].strip(), w["start"], w["end"]) for s in with_words["segments"] for w in s["words"]]
    assert len(expected_words) > 10
    assert [(w.word, w.start, w.end) for w in verbose.words] == expected_words

    words_only = ask(response_format="verbose_json", timestamp_granularities=["word"])
    assert words_only.segments is None and [(w.word, w.start, w.end) for w in words_only.words] == expected_words
    segments_only = ask(response_format="verbose_json")
    assert segments_only.words is None and len(segments_only.segments) == len(plain["segments"])


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client deprecates translations
def test_translation_on_the_multilingual_model(server, clips, base_fp32_dir):
    clip = clips["de_train"]
    with open(clip.path, "rb") as f:
        answer = server.client().audio.translations.create(model="base", file=f, response_format="verbose_json")
    expected = whisper_mlx.transcribe(str(clip.path), model=whisper_mlx.load_model(base_fp32_dir), task="translate")
    assert answer.text == expected["text"].strip()
    assert expected["language"] == "de" and "Berlin" in answer.text
    assert answer.language == "english"
    # one model kept loaded (max_loaded=1): base replaced tiny.en
    assert server.get("/health")[1]["loaded"] == ["base"]


def test_stream_deltas_add_up_to_the_text(server, clips, reference):
    path = clips["en_long_story"].path
    expected = reference(path)
    assert len(expected["segments"]) >= 2
    with open(path, "rb") as f:
        events = list(server.client().audio.transcriptions.create(model="tiny.en", file=f, stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["transcript.text.delta"] * (len(kinds) - 1) + ["transcript.text.done"]
    deltas = [e.delta for e in events[:-1]]
    assert len(deltas) == len([s for s in expected["segments"] if s["text"]])  # one per decoded segment
    assert "".join(deltas) == events[-1].text == expected["text"].strip()


def test_models_endpoint_and_key(server):
    assert [m.id for m in server.client().models.list()] == ["tiny.en", "base"]
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}):
        status, body = server.get("/v1/models", headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", (headers, body)
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(api_key="wrong-key").models.list()
    assert "incorrect API key" in _error(e.value)["message"]
    assert server.get("/health")[0] == 200  # health needs no key


# ---------------------------------------------------------------- bad input: 4xx, and the server goes on


BAD = {
    # name: (upload, form fields, status, param, pattern in the message)
    "empty file": ("empty", {}, 400, "file", r"file 'empty\.wav': empty file"),
    "text named .wav": ("notes", {}, 400, "file", r"file 'notes\.wav': not a recognized audio"),
    "truncated mp3": ("cut", {}, 400, "file", r"file 'cut\.mp3': truncated MP3"),
    "unknown model": (None, {"model": "whisper-1"}, 400, "model", r"'whisper-1' is not served here"),
    "path as model": (None, {"model": "/etc/passwd"}, 400, "model", r"not served here"),
    "over the limit": ("big", {}, 413, "file", r"larger than this server's limit of 1.5 MiB"),
    "temperature": (None, {"temperature": 1.5}, 400, "temperature", r"temperature: .*less than or equal to 1"),
    "language": (None, {"language": "klingon"}, 400, "language", r"unknown language 'klingon'"),
    "format": (None, {"response_format": "diarized_json"}, 400, "response_format", r"response_format: .*'json'"),
    "unknown field": (None, {"extra_body": {"beam_size": 5}}, 400, "beam_size", r"beam_size: not a parameter"),
    "English-only, German": (None, {"language": "de"}, 400, "language", r"'tiny\.en' is English-only"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_its_4xx(server, clips, bad_uploads, case):
    upload, fields, status, param, pattern = BAD[case]
    path = bad_uploads[upload] if upload else clips["en_train"].path
    fields = {"model": "tiny.en", **fields}
    with open(path, "rb") as f, pytest.raises(openai.APIStatusError) as e:
        server.client().audio.transcriptions.create(file=f, **fields)
    error = _error(e.value)
    assert e.value.status_code == status, error
    assert error["param"] == param and re.search(pattern, error["message"]), error
    assert server.get("/health")[0] == 200


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_translation_refused_by_an_english_only_model(server, clips):
    with open(clips["en_train"].path, "rb") as f, pytest.raises(openai.BadRequestError) as e:
        server.client().audio.translations.create(model="tiny.en", file=f)
    assert "English-only and cannot translate" in _error(e.value)["message"]


def test_upload_over_the_limit_without_content_length(server):
    """A chunked body has no Content-Length to refuse it by: it is cut off at the limit."""
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny.en\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(40):  # 2.5 MiB in all, past the 1.5 MiB limit
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
        conn.request("POST", "/v1/audio/transcriptions", body=body(), encode_chunked=True,
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "file_too_large"
    except (BrokenPipeError, ConnectionResetError):  # the server may close before the rest is sent
        pass
    finally:
        conn.close()
    assert server.get("/health")[0] == 200


def test_eight_concurrent_requests_two_bad(server, clips, bad_uploads, reference):
    good = [clips[c].path for c in ("en_weather", "en_garden", "en_library")] * 2
    bad = [bad_uploads["notes"], bad_uploads["cut"]]
    uploads = good[:3] + [bad[0]] + good[3:5] + [bad[1]] + good[5:]
    client = server.client()

    def ask(path: Path):
        try:
            with open(path, "rb") as f:
                return client.audio.transcriptions.create(model="tiny.en", file=f, response_format="verbose_json")
        except openai.APIStatusError as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, uploads))
    for path, answer in zip(uploads, answers):
        if path in bad:
            assert isinstance(answer, openai.BadRequestError), (path, answer)
            assert path.name in _error(answer)["message"]
        else:
            assert not isinstance(answer, Exception), (path, answer)
            expected = reference(path)
            assert answer.text == expected["text"].strip()
            assert [(s.start, s.end, s.text) for s in answer.segments] == \
                [(s["start"], s["end"], s["text"]) for s in expected["segments"]]
    server.wait_idle()
    assert server.get("/health")[0] == 200
    assert os.listdir(server.service.upload_dir) == []  # every upload deleted after its request


def test_a_client_that_hangs_up_stops_its_job(server, clips, caplog):
    """The request's whole body sent, then the connection closed: the job is dropped or stopped at
    its first segment (the log line says 503 cancelled, not 200), and the worker is free again."""
    caplog.set_level(logging.INFO, logger="whisper_mlx.server")
    boundary = "hangup"
    audio = clips["en_long_story"].path.read_bytes()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny.en\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"story.wav\"\r\n\r\n").encode() \
        + audio + f"\r\n--{boundary}--\r\n".encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)  # let the server read the body before the hang-up
    server.wait_idle()
    deadline = time.monotonic() + WAIT_S
    while not any("POST /v1/audio/transcriptions" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no log line for the request"
        time.sleep(0.05)
    line = next(r.getMessage() for r in caplog.records if "POST /v1/audio/transcriptions" in r.getMessage())
    assert line.endswith("status=503"), line


def test_timeout_answers_504_and_the_server_goes_on(tiny_en_fp32_dir, clips):
    running = RunningServer(ServerConfig(models={"tiny.en": str(tiny_en_fp32_dir)}, timeout=0.001))
    try:
        with open(clips["en_train"].path, "rb") as f, pytest.raises(openai.APIStatusError) as e:
            running.client().audio.transcriptions.create(model="tiny.en", file=f)
        assert e.value.status_code == 504 and _error(e.value)["code"] == "timeout"
        running.wait_idle()
        assert running.get("/health")[1]["jobs"] == 0
        assert os.listdir(running.service.upload_dir) == []
    finally:
        running.stop()


def test_batched_serving_decodes_queued_requests_together(tiny_en_fp32_dir, clips, caplog):
    """--batch-size 4: requests that wait for the model together go through the batched decoder
    as one call, and each gets the transcript the batched decoder gives its file."""
    from whisper_mlx.batched import transcribe_many

    caplog.set_level(logging.INFO, logger="whisper_mlx.server")
    loading = threading.Event()

    def held_loader(source):  # the model loads only when the test says, so requests queue meanwhile
        assert loading.wait(WAIT_S)
        return whisper_mlx.load_model(source)

    running = RunningServer(ServerConfig(models={"tiny.en": str(tiny_en_fp32_dir)}, batch_size=4), loader=held_loader)
    worker = running.service.workers["tiny.en"]
    ids = ["en_meeting", "en_weather", "en_garden", "en_library", "en_train"]
    first, queued = clips[ids[0]].path, [clips[c].path for c in ids[1:]]
    client = running.client()

    def ask(path: Path):
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(model="tiny.en", file=f, response_format="verbose_json")

    try:
        with ThreadPoolExecutor(5) as pool:
            answers = [pool.submit(ask, first)]
            _wait(lambda: worker.unfinished() == 1)  # the first is taken and waits for the model
            answers += [pool.submit(ask, path) for path in queued]
            _wait(lambda: worker.unfinished() == 5)
            loading.set()
            answers = [a.result(timeout=300) for a in answers]
    finally:
        loading.set()
        running.stop()
    assert "model tiny.en: 4 requests decoded together" in [r.getMessage() for r in caplog.records]
    model = whisper_mlx.load_model(tiny_en_fp32_dir)
    for clip_id, answer in zip(ids, answers):
        [(_, _, expected)] = list(transcribe_many([str(clips[clip_id].path)], model=model, batch_size=4))
        assert answer.text == expected["text"].strip()
        assert wer(clips[clip_id].text, answer.text) < 0.5, answer.text  # the speech, not a hallucination (tiny.en writes numbers as digits)
        assert [(s.start, s.end, s.text) for s in answer.segments] == \
            [(s["start"], s["end"], s["text"]) for s in expected["segments"]]


def _wait(condition) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ---------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command(tiny_en_fp32_dir, clips, reference, tmp_path):
    """`whisper-mlx serve` with the key from the environment: serves, logs a line per request,
    leaves no upload behind, and stops cleanly on SIGTERM."""
    port = _free_port()
    env = {**os.environ, "WHISPER_MLX_API_KEY": "env-key", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "whisper_mlx.cli", "serve", "--model", f"tiny.en={tiny_en_fp32_dir}",
                             "--port", str(port), "--preload"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="env-key", max_retries=0, timeout=300)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                assert [m.id for m in client.models.list()] == ["tiny.en"]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.2)
        path = clips["en_train"].path
        with open(path, "rb") as f:
            assert client.audio.transcriptions.create(model="tiny.en", file=f).text == reference(path)["text"].strip()
    finally:
        proc.send_signal(signal.SIGTERM)  # what a service manager sends (Ctrl-C's SIGINT takes the same path)
        _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, stderr
    line = rf"POST /v1/audio/transcriptions model=tiny\.en audio_s={_seconds(path):.2f} wall_s=\d+\.\d+ status=200"
    assert re.search(line, stderr), stderr
    assert re.search(r"GET /v1/models model=- audio_s=- wall_s=\d+\.\d+ status=200", stderr)
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # the upload directory went with the server


def test_serve_command_refuses_a_model_it_cannot_load(tmp_path):
    (tmp_path / "empty model").mkdir()
    proc = subprocess.run([sys.executable, "-m", "whisper_mlx.cli", "serve", "--model", f"x={tmp_path / 'empty model'}",
                           "--port", str(_free_port()), "--preload"], cwd=REPO, capture_output=True, text=True,
                          timeout=WAIT_S)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("whisper-mlx serve: error: model 'x' could not be loaded: ") and "empty model" in lines[-1]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- workers and the model cache


def test_model_pool_keeps_the_most_recently_used():
    loads = []
    pool = ModelPool({"a": "A", "b": "B", "c": "C"}, max_loaded=2, loader=lambda source: loads.append(source) or source)
    assert [pool.get(n) for n in ("a", "b", "a", "c", "a", "b")] == ["A", "B", "A", "C", "A", "B"]
    assert loads == ["A", "B", "C", "B"]  # "b" was the least recently used when "c" came
    assert pool.loaded() == ["a", "b"]


def test_worker_runs_queued_jobs_in_order_and_stops_a_cancelled_one(tmp_path):
    import asyncio

    release = threading.Event()
    ran = []

    def run(path, *, model, on_segment, **options):
        ran.append(options["n"])
        if options["n"] == 0:
            release.wait(WAIT_S)  # hold the worker while the others queue
        for i in range(3):
            on_segment({"text": f"{options['n']}.{i}"})
        return {"text": str(options["n"])}

    loop = asyncio.new_event_loop()
    try:
        worker = ModelWorker("m", ModelPool({"m": "m"}, 1, loader=lambda s: s), run)
        jobs = []
        for n in range(4):
            (tmp_path / f"{n}").write_bytes(b"x")
            jobs.append(Job("m", str(tmp_path / f"{n}"), {"n": n}, loop))
            worker.submit(jobs[-1])
        jobs[2].cancel()
        release.set()

        async def events(job):
            out = []
            while not out or out[-1][0] == "segment":
                out.append(await asyncio.wait_for(job.events.get(), WAIT_S))
            return out

        results = [loop.run_until_complete(events(job)) for job in jobs]
        worker.stop(WAIT_S)
    finally:
        loop.close()
    assert ran == [0, 1, 3]  # in order; the cancelled job never ran
    assert [e[1]["text"] for e in results[1]] == ["1.0", "1.1", "1.2", "1"]
    assert results[2][-1][0] == "error" and isinstance(results[2][-1][1], Cancelled)
    assert list(tmp_path.iterdir()) == []  # every job's upload deleted, run or not


def test_on_segment_is_refused_where_segments_are_not_reported_one_by_one():
    for options in ({"batch_size": 2}, {"vad_filter": True}):
        with pytest.raises(ValueError, match="on_segment: only the sequential loop"):
            whisper_mlx.transcribe("unused.wav", on_segment=print, **options)
