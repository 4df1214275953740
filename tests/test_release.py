"""The release fan-out: `python -m zoo.registry --matrix` against the manifests, and every workflow
under .github/workflows checked for what GitHub would only find at run time (jobs that `needs` a job
that does not exist, matrix keys nobody defines, steps calling make targets or modules that are not
there)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zoo.manifest import DEFAULTS_FILE, MANIFESTS_DIR, load_manifests, variants
from zoo.registry import release_matrix

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def test_matrix_is_one_job_per_family_as_the_manifests_say():
    done = subprocess.run([sys.executable, "-m", "zoo.registry", "--matrix"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1  # one line: it goes to $GITHUB_OUTPUT as matrix=...
    matrix = json.loads(done.stdout)
    assert list(matrix) == ["include"]
    rows = {row["family"]: row for row in matrix["include"]}
    assert list(rows) == [f.family for f in load_manifests()]
    for family, names in _variants_by_family().items():
        assert rows[family]["variants"].split() == names
    apple = {"medium", "medium.en", "large-v1", "large-v2", "large-v3", "large-v3-turbo",
             "distil-medium.en", "distil-large-v3", "distil-large-v3.5"}
    for family, row in rows.items():
        expected = ("macos-14-xlarge", 360) if family in apple else ("ubuntu-24.04", 180)
        assert (row["runner"], row["timeout_minutes"]) == expected, family


def _variants_by_family(manifests=None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in variants(manifests):
        out.setdefault(v.family.family, []).append(v.name)
    return out


def test_matrix_follows_the_release_defaults(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for name in ("tiny.en", "small", "large-v3"):
        shutil.copy(MANIFESTS_DIR / f"{name}.yaml", d / f"{name}.yaml")
    defaults = yaml.safe_load((MANIFESTS_DIR / DEFAULTS_FILE).read_text())
    defaults["release"] = {"runner": "self-hosted-cpu", "timeout_minutes": 30,
                           "large": {"min_n_audio_state": 768, "runner": "gpu-h100", "timeout_minutes": 90}}
    (d / DEFAULTS_FILE).write_text(yaml.safe_dump(defaults))
    rows = {r["family"]: (r["runner"], r["timeout_minutes"]) for r in release_matrix(d)["include"]}
    assert rows == {"large-v3": ("gpu-h100", 90), "small": ("gpu-h100", 90), "tiny.en": ("self-hosted-cpu", 30)}
    del defaults["release"]["large"]
    (d / DEFAULTS_FILE).write_text(yaml.safe_dump(defaults))
    assert {r["runner"] for r in release_matrix(d)["include"]} == {"self-hosted-cpu"}


# ---------------------------------------------------------------- workflows


def _make_targets() -> set[str]:
    """Every target a rule names in the Makefile (`a b: deps` names a and b; `X := v` is no rule)."""
    rules = re.findall(r"^([^\s#:=$][^:=]*):(?![=])", (ROOT / "Makefile").read_text(), re.M)
    return {target for rule in rules for target in rule.split()}


def _module_exists(module: str) -> bool:
    path = ROOT / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def _expressions(node) -> list[str]:
    return EXPR.findall(json.dumps(node))


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _matrix_keys(name: str, job: dict, jobs: dict) -> set[str] | None:
    """The keys `matrix.*` may use in this job (None: no matrix)."""
    matrix = job.get("strategy", {}).get("matrix")
    if matrix is None:
        return None
    if isinstance(matrix, dict):
        keys = {k for k in matrix if k not in ("include", "exclude")}
        return keys | {k for row in matrix.get("include", []) for k in row}
    m = re.fullmatch(r"\$\{\{\s*fromJSON\(needs\.([\w-]+)\.outputs\.([\w-]+)\)\s*\}\}", matrix)
    assert m, f"{name}: matrix {matrix!r} is neither a mapping nor fromJSON(needs.JOB.outputs.NAME)"
    source, output = m.groups()
    assert source in _needs(job), f"{name}: its matrix comes from job {source!r}, which it does not need"
    value = jobs[source].get("outputs", {}).get(output)
    assert value, f"{name}: job {source!r} has no output {output!r}"
    step_id = re.fullmatch(r"\$\{\{\s*steps\.([\w-]+)\.outputs\.([\w-]+)\s*\}\}", value)
    assert step_id and step_id.group(2) == output, f"{source}: output {output!r} = {value!r}"
    step = next((s for s in jobs[source]["steps"] if s.get("id") == step_id.group(1)), None)
    assert step is not None, f"{source}: no step with id {step_id.group(1)!r}"
    assert f"{output}=$(python -m zoo.registry --matrix)" in step["run"] and "$GITHUB_OUTPUT" in step["run"]
    rows = release_matrix()["include"]
    return set.intersection(*(set(row) for row in rows))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_jobs_needs_matrix_and_steps_are_real(path):
    data = yaml.safe_load(path.read_text())
    assert data.get(True, data.get("on")), f"{path.name}: no triggers"  # YAML 1.1 reads `on` as true
    jobs = data["jobs"]
    targets = _make_targets()
    for name, job in jobs.items():
        assert "runs-on" in job and job.get("steps"), f"{path.name}: {name}: runs-on and steps required"
        for need in _needs(job):
            assert need in jobs and need != name, f"{path.name}: {name} needs unknown job {need!r}"
        keys = _matrix_keys(name, job, jobs)
        ids = [s["id"] for s in job["steps"] if "id" in s]
        assert len(ids) == len(set(ids)), f"{name}: duplicate step ids"
        for expr in _expressions(job):
            for key in re.findall(r"(?<![\w.])matrix\.([\w-]+)", expr):
                assert keys is not None and key in keys, f"{path.name}: {name}: matrix.{key} is not defined"
            for need in re.findall(r"(?<![\w.])needs\.([\w-]+)", expr):
                assert need in _needs(job), f"{path.name}: {name}: needs.{need} without needing it"
            for step in re.findall(r"(?<![\w.])steps\.([\w-]+)", expr):
                assert step in ids, f"{path.name}: {name}: steps.{step} is no step id"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}: a step has exactly one of uses/run: {step}"
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[\w.-]+", step["uses"]), step["uses"]
                continue
            run = step["run"]
            for target in re.findall(r"(?:^|[;&|]\s*)make\s+([A-Za-z0-9_.-]+)", run, re.M):
                assert target in targets, f"{path.name}: {name}: no make target {target!r}"
            for module in re.findall(r"python\s+-m\s+([\w.]+)", run):
                if module not in ("pip", "pytest"):
                    assert _module_exists(module), f"{path.name}: {name}: no module {module!r}"
            for script in re.findall(r"\b((?:tools|scripts)/[\w./-]+\.(?:py|sh))", run):
                assert (ROOT / script).is_file(), f"{path.name}: {name}: no file {script!r}"
    # no cycles in needs
    done: set[str] = set()
    pending = dict(jobs)
    while pending:
        ready = [n for n, j in pending.items() if set(_needs(j)) <= done]
        assert ready, f"{path.name}: jobs that need each other: {sorted(pending)}"
        for n in ready:
            done.add(n)
            del pending[n]


def test_release_publishes_only_after_every_family_built_and_gated():
    data = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    jobs = data["jobs"]
    build = jobs["build"]
    assert build["strategy"]["fail-fast"] is False  # one family's failure does not hide the others'
    assert "--family ${{ matrix.family }}" in json.dumps(build) or "FAMILY=${{ matrix.family }}" in json.dumps(build)
    assert build["runs-on"] == "${{ matrix.runner }}"
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == "build-${{ matrix.family }}" and upload["with"]["path"] == "build/"
    publish = jobs["publish"]
    assert _needs(publish) == ["build"] and "if" not in publish  # default: runs only if every build job passed
    download = next(s for s in publish["steps"] if s.get("uses", "").startswith("actions/download-artifact@"))
    assert download["with"]["pattern"] == "build-*" and download["with"]["path"] == "build"
    runs = [s["run"] for s in publish["steps"] if "run" in s]
    dry = next(i for i, r in enumerate(runs) if "tools.publish --all" in r and "--dry-run" in r)
    real = next(i for i, r in enumerate(runs) if "tools.publish --all" in r and "--dry-run" not in r)
    assert dry < real


@pytest.mark.parametrize("tool", ["build", "convert", "publish", "bench"])
def test_tools_run_as_modules_without_path_edits(tool):
    """Issue 13 point 6: the zoo's tools are modules of the `tools` package, run with `python -m`;
    none edits sys.path (the worktree's own zoo is imported because the repo root is the cwd)."""
    source = (ROOT / "tools" / f"{tool}.py").read_text()
    assert "sys.path" not in source
    done = subprocess.run([sys.executable, "-m", f"tools.{tool}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in __import__("os").environ.items()
                                                      if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m tools.{tool} ")
