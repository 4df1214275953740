"""python -m tools.publish against a Hub-compatible server (tests/hub_server.py) with the real huggingface_hub client.

The variant is a real build of tiny.en-4bit; every assertion reads the server's stored state or its
request log, so an upload that did not happen, or happened twice, shows.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hub_server import HUB_BUILD, HUB_MANIFESTS, HubServer, build_variant, publish_cli

NAME = "tiny.en-4bit"
REPO = "whisper-mlx/whisper-tiny.en-4bit"


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    return build_variant(HUB_BUILD, NAME)


@pytest.fixture
def build(built, tmp_path) -> Path:
    """A private copy of the build (tests edit it): returns the build dir holding NAME/."""
    shutil.copytree(built, tmp_path / "build" / NAME)
    return tmp_path / "build"


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rehash(variant_dir: Path) -> None:
    """Rewrite checksums.json for edited files, as a rebuild would."""
    path = variant_dir / "checksums.json"
    sums = json.loads(path.read_text())
    for name in sums["files"]:
        entry = sums["files"][name]
        digest = sha256((variant_dir / name).read_bytes())
        sums["files"][name] = {**entry, "sha256": digest} if isinstance(entry, dict) else digest
    path.write_text(json.dumps(sums, indent=2))


def writes(hub: HubServer) -> list[tuple[str, str]]:
    return [r for r in hub.log if r[0] in ("POST", "PUT") and r[1] != "/api/validate-yaml"]


def assert_remote_matches(hub: HubServer, variant_dir: Path) -> None:
    head = hub.head(REPO)
    local = {p.name for p in variant_dir.iterdir()}
    assert set(head.files) == local | {".gitattributes"}
    for name in local:
        assert sha256(hub.read(REPO, name)) == sha256((variant_dir / name).read_bytes()), name
    assert head.files["weights.safetensors"].lfs_oid == sha256((variant_dir / "weights.safetensors").read_bytes())


def test_publish_creates_repo_with_every_file_in_one_commit(hub, built, tmp_path):
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME)
    assert done.returncode == 0, done.stderr
    assert_remote_matches(hub, built)
    repo = hub.repos[REPO]
    assert len(repo.commits) == 2  # the repo's initial commit + ours
    head = hub.head(REPO)
    assert repo.commits[head.parent].summary == "initial commit"
    assert len(hub.requests("POST", "/commit/")) == 1
    assert len(hub.requests("PUT", "/lfs-upload/")) == 1  # weights through LFS, small files inline
    assert head.sha in done.stdout


def test_publish_twice_uploads_nothing(hub, built, tmp_path):
    assert publish_cli(hub, tmp_path / "hf", built.parent, NAME).returncode == 0
    head = hub.head(REPO).sha
    hub.clear_log()
    again = publish_cli(hub, tmp_path / "hf", built.parent, NAME)
    assert again.returncode == 0, again.stderr
    assert writes(hub) == []
    assert hub.head(REPO).sha == head
    assert again.stdout.count("unchanged") == len(list(built.iterdir()))


def test_publish_uploads_only_changed_files(hub, build, tmp_path):
    variant = build / NAME
    assert publish_cli(hub, tmp_path / "hf", build, NAME).returncode == 0
    before = hub.head(REPO)
    card = variant / "README.md"
    card.write_text(card.read_text() + "\nA corrected sentence in the card.\n")
    rehash(variant)
    hub.clear_log()
    done = publish_cli(hub, tmp_path / "hf", build, NAME)
    assert done.returncode == 0, done.stderr
    after = hub.head(REPO)
    assert after.parent == before.sha
    changed = {p for p in after.files if after.files[p] != before.files.get(p)}
    assert changed == {"README.md", "checksums.json"}
    assert hub.requests("PUT") == []  # the weights were not sent again
    assert len(hub.requests("POST", "/commit/")) == 1
    assert_remote_matches(hub, variant)


def test_publish_retries_a_connection_dropped_mid_upload(hub, built, tmp_path):
    hub.fail_next("upload")
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME)
    assert done.returncode == 0, done.stderr
    assert len(hub.requests("PUT", "/lfs-upload/")) == 2
    assert len(hub.repos[REPO].commits) == 2
    assert_remote_matches(hub, built)


@pytest.mark.parametrize("fault", ["commit", "commit-after"])
def test_publish_retries_a_dropped_commit_without_committing_twice(hub, built, tmp_path, fault):
    """Dropped before the commit applies: it is retried; after (answer lost): comparing again finds it done."""
    hub.fail_next(fault)
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME)
    assert done.returncode == 0, done.stderr
    assert "retrying" in done.stdout
    assert len(hub.requests("POST", "/commit/")) == (2 if fault == "commit" else 1)
    assert len(hub.repos[REPO].commits) == 2
    assert_remote_matches(hub, built)


def test_publish_that_keeps_failing_leaves_the_remote_unchanged(hub, build, tmp_path):
    variant = build / NAME
    assert publish_cli(hub, tmp_path / "hf", build, NAME).returncode == 0
    head = hub.head(REPO)
    old_card = hub.read(REPO, "README.md")
    (variant / "README.md").write_text("---\nlicense: mit\n---\n# rewritten card\n")
    rehash(variant)
    hub.fail_next("commit", times=10)
    done = publish_cli(hub, tmp_path / "hf", build, NAME, "--attempts", "3")
    assert done.returncode == 1
    assert f"failed {NAME}" in done.stderr and REPO in done.stderr and "3 attempt" in done.stderr
    assert hub.head(REPO) == head
    assert hub.read(REPO, "README.md") == old_card


def _listed_extra(v: Path) -> None:
    """An extra file that checksums.json lists, too: still not one of the format's files."""
    (v / "notes.txt").write_text("left over")
    sums = json.loads((v / "checksums.json").read_text())
    sums["files"]["notes.txt"] = sha256(b"left over")
    (v / "checksums.json").write_text(json.dumps(sums))


def _fail_gates(v: Path) -> None:
    data = json.loads((v / "eval.json").read_text())
    data["passed"] = False
    data["checks"] = data.get("checks", []) + [{"name": "max_wer_delta", "threshold": 3.0, "value": 9.5, "passed": False}]
    (v / "eval.json").write_text(json.dumps(data))
    rehash(v)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_fail_gates, ["eval.json", "gates failed", "max_wer_delta"]),
        (lambda v: (v / "eval.json").unlink(), ["eval.json", "missing"]),
        (lambda v: (v / "config.json").write_text((v / "config.json").read_text() + " "), ["config.json", "does not match checksums.json", "stale"]),
        (lambda v: (v / "weights.safetensors").unlink(), ["weights.safetensors", "missing", "incomplete"]),
        (lambda v: (v / "notes.txt").write_text("left over"), ["notes.txt", "not a file of the build"]),
        (_listed_extra, ["notes.txt", "not a file of the build"]),
        (lambda v: shutil.rmtree(v), ["not built"]),
    ],
    ids=["gates-failed", "no-eval", "stale-checksum", "incomplete", "unlisted-file", "listed-extra-file", "not-built"],
)
def test_publish_refuses_a_bad_build_with_why(hub, build, tmp_path, damage, expected):
    damage(build / NAME)
    done = publish_cli(hub, tmp_path / "hf", build, NAME)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith(f"refused {NAME}:")
    for word in expected:
        assert word in line
    assert writes(hub) == [] and hub.repos == {}


def test_publish_dry_run_lists_each_file_and_changes_nothing(hub, build, tmp_path):
    variant = build / NAME
    done = publish_cli(hub, tmp_path / "hf", build, NAME, "--dry-run")
    assert done.returncode == 0, done.stderr
    for f in variant.iterdir():
        line = next(l for l in done.stdout.splitlines() if f" {f.name} " in l)
        assert line.split()[0] == "create"
        assert f" {f.stat().st_size} bytes" in line and sha256(f.read_bytes()) in line
    assert "would be created" in done.stdout
    assert writes(hub) == [] and hub.repos == {}

    assert publish_cli(hub, tmp_path / "hf", build, NAME).returncode == 0
    head = hub.head(REPO)
    (variant / "README.md").write_text("---\nlicense: mit\n---\n# new card\n")
    rehash(variant)
    hub.clear_log()
    done = publish_cli(hub, tmp_path / "hf", build, NAME, "--dry-run")
    actions = {l.split()[1]: l.split()[0] for l in done.stdout.splitlines() if l.startswith("  ") and "sha256" in l}
    assert actions == {"README.md": "update", "checksums.json": "update", "config.json": "unchanged",
                       "eval.json": "unchanged", "weights.safetensors": "unchanged"}
    assert writes(hub) == [] and hub.head(REPO) == head


def test_publish_org_override_and_permissions(hub, built, tmp_path):
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME, "--org", hub.user)
    assert done.returncode == 0, done.stderr
    assert f"{hub.user}/whisper-tiny.en-4bit" in hub.repos and REPO not in hub.repos

    denied = publish_cli(hub, tmp_path / "hf", built.parent, NAME, "--org", "someone-else")
    assert denied.returncode == 1 and "403" in denied.stderr
    assert "someone-else/whisper-tiny.en-4bit" not in hub.repos


def test_publish_without_a_token_is_refused(hub, built, tmp_path):
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME, HF_TOKEN="")
    assert done.returncode == 1
    assert "no Hub token" in done.stderr
    assert writes(hub) == []


def test_publish_unknown_variant_and_argument_errors(hub, built, tmp_path):
    done = publish_cli(hub, tmp_path / "hf", built.parent, "tiny.en-3bit")
    assert done.returncode == 2 and "no variant 'tiny.en-3bit'" in done.stderr
    both = publish_cli(hub, tmp_path / "hf", built.parent, NAME, "--all")
    assert both.returncode == 2 and "not both" in both.stderr
    assert writes(hub) == []


def test_publish_all_publishes_what_is_built_and_refuses_the_rest(hub, built, tmp_path):
    from zoo.manifest import variants

    done = publish_cli(hub, tmp_path / "hf", built.parent, "--all")
    assert done.returncode == 1  # a release is every manifest variant: the unbuilt ones are refused
    assert list(hub.repos) == [REPO]
    assert_remote_matches(hub, built)
    refused = done.stderr.strip().splitlines()
    assert len(refused) == len(variants(HUB_MANIFESTS)) - 1
    assert all(line.startswith("refused ") and "not built" in line for line in refused)


def _recorded_inputs(variant_dir: Path) -> dict:
    return json.loads((variant_dir / "checksums.json").read_text())["inputs"]


def test_publish_refuses_a_build_of_another_variant(hub, build, tmp_path):
    """Issue 17 point 4: a tiny.en-4bit build copied into tiny.en-8bit/ would overwrite the 8-bit repo."""
    shutil.copytree(build / NAME, build / "tiny.en-8bit")
    done = publish_cli(hub, tmp_path / "hf", build, "tiny.en-8bit")
    assert done.returncode == 1
    line = done.stderr.strip()
    assert line == (f"refused tiny.en-8bit: {build / 'tiny.en-8bit' / 'checksums.json'}: built as 'tiny.en-4bit', "
                    "not 'tiny.en-8bit' (the directory holds another variant)")
    assert writes(hub) == [] and hub.repos == {}


def test_publish_refuses_a_build_from_an_older_manifest(hub, build, tmp_path):
    """The manifest changed since the build (here the 4-bit gates): its digest no longer matches."""
    import yaml

    manifests = tmp_path / "manifests"
    shutil.copytree(HUB_MANIFESTS, manifests)
    data = yaml.safe_load((manifests / "tiny.en.yaml").read_text())
    data["variants"]["4bit"]["gates"] = {"max_wer_delta": 40.0}
    (manifests / "tiny.en.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    done = publish_cli(hub, tmp_path / "hf", build, NAME, "--manifests", str(manifests))
    assert done.returncode == 1
    recorded = _recorded_inputs(build / NAME)["manifest_digest"]
    assert f"refused {NAME}: {build / NAME / 'checksums.json'}: built from another version of the manifest " \
           f"(digest {recorded[:16]}" in done.stderr
    assert "rebuild" in done.stderr and done.stderr.count("\n") == 1
    assert writes(hub) == [] and hub.repos == {}


def test_publish_refuses_a_build_for_another_repo(hub, build, tmp_path):
    """Built for whisper-mlx/..., while the manifests (through $WHISPER_MLX_ZOO_ORG) now name another repo."""
    done = publish_cli(hub, tmp_path / "hf", build, NAME, WHISPER_MLX_ZOO_ORG=hub.user)
    assert done.returncode == 1
    assert (f"refused {NAME}: {build / NAME / 'checksums.json'}: built for {REPO}, the manifests now give "
            f"{hub.user}/whisper-tiny.en-4bit; rebuild") in done.stderr
    assert writes(hub) == [] and hub.repos == {}


def test_publish_sends_exactly_the_five_files_of_the_format(hub, built, tmp_path):
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME)
    assert done.returncode == 0, done.stderr
    assert set(hub.head(REPO).files) == {".gitattributes", "config.json", "weights.safetensors", "README.md",
                                         "eval.json", "checksums.json"}


@pytest.mark.parametrize(
    "damage",
    [lambda v: (v / "notes.txt").write_text("x"), _listed_extra, lambda v: (v / "eval.json").unlink(),
     lambda v: (v / "config.json").write_text("{}")],
    ids=["unlisted-file", "listed-extra-file", "no-eval", "stale-checksum"],
)
def test_build_and_publish_agree_on_complete(hub, build, tmp_path, damage):
    """What publish refuses as incomplete, the build sees as not built (so a rebuild replaces it), for
    the same reason, in the same words."""
    from zoo import build as zoo_build
    from zoo.manifest import variants

    variant = next(v for v in variants(HUB_MANIFESTS) if v.name == NAME)
    inputs = _recorded_inputs(build / NAME)
    assert zoo_build.why_not_built(build / NAME, inputs) is None
    assert inputs == zoo_build.inputs_of(variant, inputs["source_sha256"])
    damage(build / NAME)
    why = zoo_build.why_not_built(build / NAME, inputs)
    assert why is not None and not zoo_build.is_built(build / NAME, inputs)
    done = publish_cli(hub, tmp_path / "hf", build, NAME)
    assert done.returncode == 1 and done.stderr.strip() == f"refused {NAME}: {why}"


def test_publish_offline_is_refused_at_once_not_retried(hub, built, tmp_path):
    """Issue 17 point 12: HF_HUB_OFFLINE=1 is a setting, not a network hiccup: one line saying so, no retries."""
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME, "--attempts", "5", HF_HUB_OFFLINE="1")
    assert done.returncode == 1
    assert "retrying" not in done.stdout + done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith(f"failed {NAME}: {REPO}: ")
    assert "offline (HF_HUB_OFFLINE=1)" in line and "not retried" in line
    assert hub.log == []


@pytest.mark.parametrize(
    "env, why",
    [({"HF_HUB_OFFLINE": "1"}, "offline (HF_HUB_OFFLINE=1)"), ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach")],
    ids=["HF_HUB_OFFLINE", "unreachable"],
)
def test_dry_run_offline_prints_the_local_plan(hub, built, tmp_path, env, why):
    """Issue 18 point 6: a dry run without the Hub prints what would go up (files, sizes, card) and
    says the remote could not be compared, instead of failing after retries."""
    done = publish_cli(hub, tmp_path / "hf", built.parent, NAME, "--dry-run", "--attempts", "5", **env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "retrying" not in out and done.stderr == ""
    assert out.splitlines()[0].startswith(f"{NAME} -> {REPO} (remote not compared: {why}")
    for name in ("config.json", "weights.safetensors", "README.md", "eval.json", "checksums.json"):
        f = built / name
        line = next(l for l in out.splitlines() if f" {name} " in l)
        assert line.split()[0] == "local" and f" {f.stat().st_size} bytes" in line
        assert sha256(f.read_bytes()) in line
    card = next(l for l in out.splitlines() if l.strip().startswith("card:"))
    assert f"# {REPO}" in card and "license mit" in card and "base_model openai/whisper-tiny.en" in card
    assert "gates passed" in card
    total = sum((built / n).stat().st_size for n in ("config.json", "weights.safetensors", "README.md",
                                                      "eval.json", "checksums.json"))
    assert f"dry run: remote not compared; 5 file(s), {total} bytes would be uploaded where they differ" in out
    assert writes(hub) == [] and hub.repos == {}
