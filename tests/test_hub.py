"""Loading by Hub repo id and by zoo short name (whisper_mlx.hub), through the real huggingface_hub client.

A real tiny.en-4bit build is published to the Hub-compatible test server with python -m tools.publish, then a
fresh interpreter (HF_ENDPOINT pointing at the server, a private HF_HOME) loads and transcribes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hub_server import TEST_CACHE, PYTHON, HubServer, build_variant, client_env, publish_cli, run

NAME = "tiny.en-4bit"
REPO = "whisper-mlx/whisper-tiny.en-4bit"

# Runs in a fresh interpreter: resolve + load + transcribe, and report what the runtime imported.
LOAD = r"""
import json, sys
import whisper_mlx
from whisper_mlx.load import load_model, resolve
name, audio, revision = sys.argv[1], sys.argv[2], sys.argv[3] or None
try:
    path = resolve(name, revision=revision)
    load_model(name, revision=revision)
    text = whisper_mlx.transcribe(audio, path_or_hf_repo=name, temperature=0.0)["text"] if audio else None
except whisper_mlx.ModelLoadError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(3)
print(json.dumps({"path": str(path), "files": sorted(p.name for p in path.iterdir()), "text": text,
                  "imported": sorted(m for m in ("zoo", "torch") if m in sys.modules)}))
"""


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    return build_variant(TEST_CACHE / "hub-build", NAME)


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    from zoo.speech import make_clips

    return make_clips(tmp_path_factory.getbasetemp() / "hub-clips", ["en_weather"])["en_weather"]


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def published(hub, built, tmp_path) -> HubServer:
    done = publish_cli(hub, tmp_path / "publisher-home", built.parent, NAME)
    assert done.returncode == 0, done.stderr
    hub.clear_log()
    return hub


def load(hub: HubServer, hf_home: Path, name: str, audio: Path | None = None, revision: str = "", **env) -> dict:
    done = run([PYTHON, "-c", LOAD, name, str(audio or ""), revision], client_env(hub, hf_home, **env))
    assert done.returncode in (0, 3), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hub_round_trip_by_repo_id_transcribes_like_the_local_directory(published, built, clip, tmp_path):
    hf_home = tmp_path / "fresh-home"
    remote = load(published, hf_home, REPO, clip.path)
    local = load(published, tmp_path / "unused-home", str(built), clip.path)
    assert remote["text"] == local["text"]
    assert "cloudy" in remote["text"].lower()  # and it is the clip's speech, not an empty string
    path = Path(remote["path"])
    assert path.is_relative_to(hf_home / "hub" / "models--whisper-mlx--whisper-tiny.en-4bit")
    assert remote["files"] == ["README.md", "config.json", "weights.safetensors"]  # not eval.json/checksums.json
    for name in remote["files"]:
        assert sha256(path / name) == sha256(built / name)
    assert remote["imported"] == []  # the runtime imports neither zoo nor torch
    assert not published.requests(contains="eval.json") and not published.requests(contains="checksums.json")


def test_hub_short_name_resolves_through_the_registry(published, built, tmp_path):
    from whisper_mlx.hub import registry

    assert registry()[NAME] == REPO
    result = load(published, tmp_path / "home", NAME)
    assert Path(result["path"]).parent.parent.name == "models--whisper-mlx--whisper-tiny.en-4bit"
    assert sha256(Path(result["path"]) / "weights.safetensors") == sha256(built / "weights.safetensors")
    assert published.requests("GET", f"/api/models/{REPO}/revision/main")


def test_hub_offline_and_unreachable_load_from_the_cache(published, tmp_path):
    hf_home = tmp_path / "home"
    online = load(published, hf_home, REPO)
    published.clear_log()
    for name in (REPO, NAME):
        offline = load(published, hf_home, name, HF_HUB_OFFLINE="1")
        assert offline["path"] == online["path"] and offline["files"] == online["files"]
    assert published.log == []  # offline: not one request

    published.close()  # the Hub goes away: the cache still serves
    assert load(published, hf_home, REPO)["path"] == online["path"]


def test_hub_offline_without_cache_says_what_was_tried(hub, tmp_path):
    result = load(hub, tmp_path / "empty-home", NAME, HF_HUB_OFFLINE="1")
    error = result["error"]
    assert "tiny.en-4bit" in error and REPO in error and "HF_HUB_OFFLINE" in error and "not in the cache" in error


def test_hub_revision_pins_an_older_commit(published, built, tmp_path):
    first = published.head(REPO).sha
    build = tmp_path / "build"
    shutil.copytree(built, build / NAME)
    (build / NAME / "README.md").write_text("---\nlicense: mit\n---\n# second release\n")
    sums = json.loads((build / NAME / "checksums.json").read_text())
    entry = sums["files"]["README.md"]
    digest = sha256(build / NAME / "README.md")
    sums["files"]["README.md"] = {**entry, "sha256": digest} if isinstance(entry, dict) else digest
    (build / NAME / "checksums.json").write_text(json.dumps(sums))
    assert publish_cli(published, tmp_path / "publisher", build, NAME).returncode == 0
    assert published.head(REPO).sha != first

    hf_home = tmp_path / "home"
    old = Path(load(published, hf_home, REPO, revision=first)["path"])
    new = Path(load(published, hf_home, REPO)["path"])
    assert old.name == first and new.name == published.head(REPO).sha
    assert (old / "README.md").read_bytes() == (built / "README.md").read_bytes()
    assert "second release" in (new / "README.md").read_text()

    missing = load(published, hf_home, REPO, revision="v9")["error"]
    assert "no such revision" in missing and "v9" in missing


def test_hub_errors_name_the_three_kinds_of_name(hub, tmp_path):
    from whisper_mlx import ModelLoadError, load_model

    with pytest.raises(ModelLoadError) as unknown:
        load_model("tiny.en-4bitt")  # no slash: only a short name could match; no network needed
    message = str(unknown.value)
    assert "not a local model directory" in message and "Hub repo id" in message and "short name" in message
    assert "did you mean tiny.en-4bit" in message

    absent = load(hub, tmp_path / "home", "nobody/nothing")["error"]
    assert "not a local model directory" in absent and "not found on " + hub.endpoint in absent

    hub.put_file("whisper-mlx/not-a-model", "notes.txt", b"just notes\n")
    wrong = load(hub, tmp_path / "home", "whisper-mlx/not-a-model")["error"]
    assert "no config.json" in wrong


def test_hub_registry_in_sync_with_manifests(monkeypatch, tmp_path):
    monkeypatch.delenv("WHISPER_MLX_ZOO_ORG", raising=False)
    from zoo.manifest import variants
    from zoo.registry import REGISTRY_PATH, in_sync, main

    from whisper_mlx.hub import REGISTRY_PATH as RUNTIME_PATH, registry

    assert REGISTRY_PATH == RUNTIME_PATH
    assert in_sync(), "whisper_mlx/assets/registry.json is stale: run `python -m zoo.registry`"
    assert registry() == {v.name: v.repo_id for v in variants()}

    stale = tmp_path / "registry.json"
    data = json.loads(REGISTRY_PATH.read_text())
    data["models"].pop(NAME)
    stale.write_text(json.dumps(data))
    assert main(["--check", "--output", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0 and main(["--check", "--output", str(stale)]) == 0
    assert stale.read_text() == REGISTRY_PATH.read_text()


# ---- the test server itself must be strict, or a client bug would pass unnoticed --------------------


def _call(hub: HubServer, method: str, path: str, body: bytes | None = None, token: str | None = "ok",
          content_type: str = "application/json") -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {hub.token if token == 'ok' else token}"
    request = urllib.request.Request(hub.endpoint + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _commit_body(*ops: dict, parent: str | None = None) -> bytes:
    header = {"summary": "test", "description": ""} | ({"parentCommit": parent} if parent else {})
    return b"".join(json.dumps(line).encode() + b"\n" for line in [{"key": "header", "value": header}, *ops])


def test_hub_server_rejects_what_the_real_hub_rejects(hub):
    repo = "whisper-mlx/strict"
    add = {"key": "file", "value": {"path": "a.txt", "content": "aGk=", "encoding": "base64"}}
    status, headers, _ = _call(hub, "POST", f"/api/models/{repo}/commit/main", _commit_body(add))
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"  # commit to a missing repo

    create = json.dumps({"name": "strict", "organization": "whisper-mlx"}).encode()
    assert _call(hub, "POST", "/api/repos/create", create, token=None)[0] == 401  # writes need a token
    assert _call(hub, "POST", "/api/repos/create", create, token="hf_wrong")[0] == 401
    assert _call(hub, "POST", "/api/repos/create", create)[0] == 200
    assert _call(hub, "POST", "/api/repos/create", create)[0] == 409  # already exists
    other = json.dumps({"name": "x", "organization": "someone-else"}).encode()
    assert _call(hub, "POST", "/api/repos/create", other)[0] == 403  # not the user's org

    head = hub.head(repo).sha
    status, headers, _ = _call(hub, "POST", f"/api/models/{repo}/commit/dev", _commit_body(add))
    assert status == 404 and headers["X-Error-Code"] == "RevisionNotFound"
    assert _call(hub, "POST", f"/api/models/{repo}/commit/main", _commit_body(add, parent="0" * 40))[0] == 412
    lfs = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "ab" * 32, "size": 3}}
    assert _call(hub, "POST", f"/api/models/{repo}/commit/main", _commit_body(lfs))[0] == 422  # never uploaded
    assert _call(hub, "POST", f"/api/models/{repo}/commit/main", _commit_body())[0] == 400  # empty commit
    assert hub.head(repo).sha == head  # nothing above changed the repo

    data = b"model weights"
    oid = hashlib.sha256(data).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}], "hash_algo": "sha256"}
    status, _, raw = _call(hub, "POST", f"/{repo}.git/info/lfs/objects/batch", json.dumps(batch).encode())
    href = json.loads(raw)["objects"][0]["actions"]["upload"]["href"]
    path = href[len(hub.endpoint):]
    assert _call(hub, "PUT", path, b"other content!", content_type="application/octet-stream")[0] == 400  # oid checked
    assert _call(hub, "PUT", "/lfs-upload/" + "0" * 32, data, content_type="application/octet-stream")[0] == 403
    assert _call(hub, "PUT", path, data, content_type="application/octet-stream")[0] == 200
    lfs = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}}
    assert _call(hub, "POST", f"/api/models/{repo}/commit/main", _commit_body(add, lfs, parent=head))[0] == 200
    assert hub.read(repo, "w.bin") == data and hub.read(repo, "a.txt") == b"hi"
    assert hub.head(repo).parent == head

    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", hub.port)
    conn.request("HEAD", f"/{repo}/resolve/main/w.bin")  # an LFS file: redirect to the "CDN" host
    answer = conn.getresponse()
    assert answer.status == 302 and answer.headers["Location"].startswith(hub.cdn)
    assert answer.headers["X-Linked-Etag"] == f'"{oid}"' and answer.headers["X-Linked-Size"] == str(len(data))
    assert answer.headers["X-Repo-Commit"] == hub.head(repo).sha
    conn.close()
    status, headers, _ = _call(hub, "GET", f"/{repo}/resolve/main/missing.txt", token=None)
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound" and headers["X-Repo-Commit"] == hub.head(repo).sha
