"""Publish built variants (DIR/NAME/: the model directory + card, eval.json, checksums.json) to the Hub.

A variant is published only if its build is complete and current (zoo.builddir: the build's own test,
exactly the format's five files, hashes matching checksums.json), was built as this variant for this
repo from this manifest (the inputs checksums.json records), and its gates passed (eval.json). The remote is compared file by file (sha256 against LFS oids, git
blob ids for small files) and only what changed goes up, in ONE commit whose parent is the head we
compared against, so the remote is either unchanged or fully updated. Transient network failures
are retried with backoff, re-comparing first (a commit whose answer was lost is not made twice).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from . import CONVERTER_VERSION, builddir

BUILT_FILES = builddir.FILES
RETRY_STATUS = (408, 412, 429, 500, 502, 503, 504)  # 412: the branch moved under us -> compare again


class PublishError(RuntimeError):
    """A variant that must not be published (refused); the message names the file and the reason."""


class PushError(PublishError):
    """Publishing was attempted and failed (network, permissions); the remote is unchanged or complete."""


@dataclass(frozen=True)
class LocalFile:
    """A file to publish, with the digests the Hub reports (sha256 for LFS, git blob sha1 otherwise)."""

    path_in_repo: str
    local: Path
    size: int
    sha256: str
    git_sha1: str


@dataclass(frozen=True)
class FileChange:
    file: LocalFile
    action: Literal["create", "update", "unchanged", "local"]  # local: the remote was not compared


@dataclass
class Plan:
    """What publishing one variant does to its repo."""

    name: str
    repo_id: str
    repo_exists: bool
    head: str | None  # the commit compared against
    changes: list[FileChange] = field(default_factory=list)
    commit: str | None = None  # set once pushed
    not_compared: str | None = None  # why the remote could not be compared (a dry run without the Hub)

    @property
    def uploads(self) -> list[LocalFile]:
        return [c.file for c in self.changes if c.action != "unchanged"]


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, read once in chunks."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PublishError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path}: expected a JSON object")
    return data


def gate_failures(eval_data: dict) -> list[str]:
    """Names of the failed checks in eval.json (zoo.gates writes `passed` and `checks: [{name, passed}]`)."""
    checks = eval_data.get("checks") or []
    failed = [str(c.get("name", "?")) for c in checks if isinstance(c, dict) and c.get("passed") is not True]
    if eval_data.get("passed") is not True and not failed:
        failed.append(f"passed: {eval_data.get('passed')!r}")
    return failed


def check_built(variant_dir: Path, expected: dict | None = None) -> list[LocalFile]:
    """The five files of a complete, current, gate-passing build (zoo.builddir: the build's own
    definition), made as the variant `expected` describes (its name, repo id, manifest digest,
    converter version); PublishError saying why otherwise."""
    try:
        builddir.check(variant_dir, expected)
    except builddir.IncompleteBuild as e:
        raise PublishError(str(e)) from None
    eval_data = _read_json(variant_dir / "eval.json")
    if "passed" not in eval_data:
        raise PublishError(f"{variant_dir / 'eval.json'}: field 'passed' missing; not a gate result")
    failed = gate_failures(eval_data)
    if failed:
        raise PublishError(f"{variant_dir / 'eval.json'}: gates failed ({', '.join(failed)}); refusing to publish")
    files = []
    for name in sorted(builddir.FILES):
        sha256, sha1 = file_digests(variant_dir / name)
        files.append(LocalFile(name, variant_dir / name, (variant_dir / name).stat().st_size, sha256, sha1))
    return files


def expected_inputs(variant) -> dict:
    """What a build of `variant` (zoo.manifest.Variant) records that publish checks: it is this variant,
    for this repo, from this manifest, by this converter."""
    return {"variant": variant.name, "repo_id": variant.repo_id, "manifest_digest": variant.digest,
            "converter_version": CONVERTER_VERSION}


def _api(endpoint: str | None = None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint)


def plan(name: str, files: list[LocalFile], repo_id: str, api=None, revision: str = "main") -> Plan:
    """Compare local files with the repo's files at `revision` (read-only)."""
    from huggingface_hub import RepoFile
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    api = api or _api()
    try:
        head = api.repo_info(repo_id, revision=revision).sha
    except RepositoryNotFoundError:
        return Plan(name, repo_id, False, None, [FileChange(f, "create") for f in files])
    except RevisionNotFoundError:
        raise PublishError(f"{repo_id}: no branch {revision!r}") from None
    remote = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, revision=head) if isinstance(e, RepoFile)}
    changes = []
    for f in files:
        entry = remote.get(f.path_in_repo)
        if entry is None:
            changes.append(FileChange(f, "create"))
        elif (entry.lfs.sha256 if entry.lfs else None) == f.sha256 or (not entry.lfs and entry.blob_id == f.git_sha1):
            changes.append(FileChange(f, "unchanged"))
        else:
            changes.append(FileChange(f, "update"))
    return Plan(name, repo_id, True, head, changes)


def push(p: Plan, api=None, revision: str = "main") -> str | None:
    """Create the repo if needed and commit the plan's uploads in one commit on top of `p.head`."""
    from huggingface_hub import CommitOperationAdd

    api = api or _api()
    if not p.uploads:
        return p.head
    head = p.head
    if not p.repo_exists:
        api.create_repo(p.repo_id, exist_ok=True)
        head = api.repo_info(p.repo_id, revision=revision).sha
    summary = "\n".join(f"{f.path_in_repo}: sha256 {f.sha256} ({f.size} bytes)" for f in p.uploads)
    info = api.create_commit(
        p.repo_id,
        [CommitOperationAdd(f.path_in_repo, str(f.local)) for f in p.uploads],
        commit_message=f"Publish {p.name}: {', '.join(f.path_in_repo for f in p.uploads)}",
        commit_description=summary,
        revision=revision,
        parent_commit=head,
    )
    return info.oid


def hub_offline() -> bool:
    """Whether huggingface_hub runs in offline mode (HF_HUB_OFFLINE=1): every Hub call would fail."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _unreachable(error: BaseException) -> str | None:
    """Why the Hub cannot be reached (offline mode, no connection) if that is the error, else None."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub < 2 uses httpx/requests
        import httpx  # type: ignore[no-redef]
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OfflineModeIsEnabled):
            return "offline (HF_HUB_OFFLINE=1)"
        if isinstance(error, HfHubHTTPError):
            return None
        if isinstance(error, (httpx.TransportError, ConnectionError, TimeoutError)):
            return f"cannot reach the Hub ({type(error).__name__})"
        error = error.__cause__ or error.__context__
    return None


def local_plan(name: str, files: list[LocalFile], repo_id: str, why: str) -> Plan:
    """The plan when the remote cannot be compared: every local file, as it would be offered."""
    return Plan(name, repo_id, False, None, [FileChange(f, "local") for f in files], not_compared=why)


def _transient(error: BaseException) -> bool:
    """Network trouble or a Hub hiccup worth retrying (anywhere in the exception chain); offline mode
    (HF_HUB_OFFLINE) is a setting, never retried."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub < 2 uses httpx/requests
        import httpx  # type: ignore[no-redef]
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OfflineModeIsEnabled):
            return False
        if isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else None
            return status in RETRY_STATUS
        if isinstance(error, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def publish(
    variant_dir: Path,
    repo_id: str,
    *,
    name: str | None = None,
    expected: dict | None = None,
    dry_run: bool = False,
    api=None,
    revision: str = "main",
    attempts: int = 5,
    retry_wait: float = 2.0,
    log: Callable[[str], None] = print,
) -> Plan:
    """Publish one built variant directory to `repo_id`; returns the (executed) plan. `expected`: the
    inputs its checksums.json must record (expected_inputs(variant))."""
    from huggingface_hub.errors import HfHubHTTPError

    files = check_built(variant_dir, expected)
    name = name or variant_dir.name
    if hub_offline():
        if not dry_run:
            raise PushError(f"{repo_id}: offline (HF_HUB_OFFLINE=1): publishing needs the Hub; not retried, nothing sent")
        p = local_plan(name, files, repo_id, "offline (HF_HUB_OFFLINE=1)")
        log(describe(p, dry_run))
        return p
    api = api or _api()
    if not dry_run and api.token is None:
        from huggingface_hub import get_token

        if get_token() is None:
            raise PublishError(f"{repo_id}: no Hub token (set HF_TOKEN or run `hf auth login`)")
    for attempt in range(1, attempts + 1):
        try:
            p = plan(name, files, repo_id, api, revision)
            if attempt == 1 or dry_run:
                log(describe(p, dry_run))
            if dry_run:
                return p
            p.commit = push(p, api, revision)
            log(f"  committed {len(p.uploads)} file(s) as {p.commit}" if p.uploads else "  up to date, nothing uploaded")
            return p
        except PublishError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below; anything not transient is reported
            if dry_run and (why := _unreachable(e)):  # a dry run shows the local plan instead
                p = local_plan(name, files, repo_id, why)
                log(describe(p, dry_run))
                return p
            if not _transient(e) or attempt == attempts:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code in (401, 403):
                    msg = f"not allowed ({e.response.status_code}): check the token's write access to the org"
                raise PushError(f"{repo_id}: {msg} (after {attempt} attempt(s); remote left unchanged or complete)") from e
            wait = min(retry_wait * 2 ** (attempt - 1), 30.0)
            log(f"  attempt {attempt} failed ({type(e).__name__}); retrying in {wait:g}s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def describe(p: Plan, dry_run: bool = False) -> str:
    """The plan, file by file: action, path, size and sha256; without a remote comparison, the card too."""
    if p.not_compared:
        head = f"{p.name} -> {p.repo_id} (remote not compared: {p.not_compared})"
    else:
        head = f"{p.name} -> {p.repo_id}" + ("" if p.repo_exists else " (new repo, would be created)" if dry_run else " (new repo)")
    lines = [head]
    for c in p.changes:
        lines.append(f"  {c.action:<9} {c.file.path_in_repo:<22} {c.file.size:>12} bytes  sha256 {c.file.sha256}")
    card = next((c.file.local for c in p.changes if c.file.path_in_repo == "README.md"), None)
    if p.not_compared and card is not None:
        lines.append(f"  card: {card_summary(card)}")
    if dry_run and p.not_compared:
        size = sum(f.size for f in p.uploads)
        lines.append(f"  dry run: remote not compared; {len(p.uploads)} file(s), {size} bytes would be uploaded "
                     "where they differ from it, in one commit")
    elif dry_run:
        lines.append(f"  dry run: {len(p.uploads)} file(s) would be uploaded in one commit" if p.uploads else "  dry run: up to date")
    return "\n".join(lines)


def card_summary(path: Path) -> str:
    """One line about a model card: its title and what its metadata says (license, base model, gates)."""
    import yaml

    text = path.read_text()
    meta: dict = {}
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        front, text = text[4:].split("\n---\n", 1)
        try:
            meta = yaml.safe_load(front) or {}
        except yaml.YAMLError:
            meta = {}
    title = next((line for line in text.splitlines() if line.startswith("# ")), "(no title)")
    parts = [title]
    for key in ("license", "base_model", "pipeline_tag"):
        if meta.get(key):
            parts.append(f"{key} {meta[key]}")
    if "Overall: **passed**" in text:
        parts.append("gates passed")
    elif "Overall: **FAILED**" in text:
        parts.append("gates FAILED")
    return "; ".join(parts) + f" ({len(path.read_text().splitlines())} lines)"


def target_repo(repo_id: str, org: str | None) -> str:
    """The manifest's repo id, moved to another org when one is given."""
    return f"{org}/{repo_id.split('/', 1)[1]}" if org else repo_id


def publish_variants(
    names: list[str],
    build_dir: Path,
    *,
    org: str | None = None,
    dry_run: bool = False,
    attempts: int = 5,
    retry_wait: float = 2.0,
    manifests_dir: Path | None = None,
    log: Callable[[str], None] = print,
    err: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> int:
    """Publish each named variant (all manifests' variants if `names` is empty); the number refused or
    failed. ManifestError (nothing attempted) for invalid manifests or a name they do not declare."""
    from .manifest import ManifestError, manifests_root, variants

    by_name = {v.name: v for v in variants(manifests_dir)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ManifestError(f"{manifests_root(manifests_dir)}: no variant {unknown[0]!r} (see python -m tools.build --list)")
    failures = 0
    for n in names or list(by_name):
        try:
            publish(build_dir / n, target_repo(by_name[n].repo_id, org), name=n, expected=expected_inputs(by_name[n]),
                    dry_run=dry_run, attempts=attempts, retry_wait=retry_wait, log=log)
        except PublishError as e:
            err(f"{'failed' if isinstance(e, PushError) else 'refused'} {n}: {e}")
            failures += 1
    return failures
