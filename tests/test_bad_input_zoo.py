"""Bad input to the zoo's commands (issue 17): one line naming the input and the problem, a
non-zero exit, and nothing written, not even the output directory.

The table is data: a new bad input is a row. Each row names the command (a module run with
`python -m`), its arguments, the inputs it is given (files written under a fresh directory,
`{d}` in arguments and texts standing for that directory), the exit status and a regex the one
line on stderr must match. After the run the directory must hold exactly the inputs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
DEFAULTS = (MANIFESTS / "_defaults.yaml").read_text()
TINY_EN = (MANIFESTS / "tiny.en.yaml").read_text()


@dataclass(frozen=True)
class Row:
    id: str
    command: str  # module for `python -m`
    args: tuple[str, ...]
    says: str  # regex for the single stderr line ({d}: the row's directory)
    status: int = 2
    files: dict[str, str] = field(default_factory=dict)  # path under {d} -> text


GOOD = {"m/_defaults.yaml": DEFAULTS, "m/tiny.en.yaml": TINY_EN}
DUPLICATE_KEY = {"m/_defaults.yaml": DEFAULTS,
                 "m/tiny.en.yaml": TINY_EN + "    dtype: float32\n    dtype: float16\n"}
NOT_YAML = {"m/_defaults.yaml": DEFAULTS, "m/tiny.en.yaml": "family: [tiny.en\n"}
NO_DEFAULTS = {"m/tiny.en.yaml": TINY_EN}
BAD_FIELD = {"m/_defaults.yaml": DEFAULTS, "m/tiny.en.yaml": TINY_EN.replace("n_mels: 80", "n_mels: eighty")}

WHISPER_CONFIG = ('{"model_type": "whisper", "num_mel_bins": 80, "max_source_positions": 1500, "d_model": 64, '
                  '"encoder_attention_heads": 4, "encoder_layers": 2, "vocab_size": 51864, "max_target_positions": 64, '
                  '"decoder_attention_heads": 4, "decoder_layers": 2, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256}')

ROWS = [
    # python -m tools.build
    Row("build-unknown-variant", "tools.build", ("tiny.en-3bit", "--manifests", "{d}/m", "--out", "{d}/out"),
        r"no variant named tiny\.en-3bit", files=GOOD),
    Row("build-duplicate-key", "tools.build", ("tiny.en-4bit", "--manifests", "{d}/m", "--out", "{d}/out"),
        r"{d}/m/tiny\.en\.yaml:3\d: duplicate key 'dtype' \(first at line 3\d\)$", files=DUPLICATE_KEY),
    Row("build-not-yaml", "tools.build", ("--all", "--manifests", "{d}/m", "--out", "{d}/out"),
        r"{d}/m/tiny\.en\.yaml:2: expected ',' or '\]'", files=NOT_YAML),
    Row("build-bad-field", "tools.build", ("tiny.en-4bit", "--manifests", "{d}/m", "--out", "{d}/out"),
        r"{d}/m/tiny\.en\.yaml: dims\.n_mels: Input should be a valid integer", files=BAD_FIELD),
    Row("build-no-defaults", "tools.build", ("tiny.en-4bit", "--manifests", "{d}/m", "--out", "{d}/out"),
        r"{d}/m/_defaults\.yaml: missing", files=NO_DEFAULTS),
    Row("build-unknown-family", "tools.build", ("--family", "tiny.fr", "--manifests", "{d}/m", "--out", "{d}/out"),
        r"{d}/m: no model family 'tiny\.fr' \(known: tiny\.en\)", files=GOOD),
    Row("build-family-and-all", "tools.build", ("--all", "--family", "tiny.en", "--out", "{d}/out"),
        r"^python -m tools\.build: error: --all and variant or family names are exclusive \(see --help\)$"),
    Row("build-nothing-named", "tools.build", ("--out", "{d}/out"),
        r"^python -m tools\.build: error: name variants or --family, or give --all or --list"),
    Row("build-no-manifests", "tools.build", ("--all", "--manifests", "{d}/none", "--out", "{d}/out"),
        r"{d}/none: no manifests"),
    Row("build-list-bad-manifest", "tools.build", ("--list", "--manifests", "{d}/m"),
        r"{d}/m/tiny\.en\.yaml:3\d: duplicate key 'dtype'", files=DUPLICATE_KEY),
    # python -m zoo.registry
    Row("registry-bad-manifest", "zoo.registry", ("--manifests", "{d}/m", "--output", "{d}/registry.json"),
        r"{d}/m/tiny\.en\.yaml: dims\.n_mels", files=BAD_FIELD),
    Row("registry-check-bad-manifest", "zoo.registry", ("--check", "--manifests", "{d}/m", "--output", "{d}/r.json"),
        r"{d}/m/tiny\.en\.yaml:3\d: duplicate key", files=DUPLICATE_KEY),
    Row("registry-matrix-bad-manifest", "zoo.registry", ("--matrix", "--manifests", "{d}/m"),
        r"{d}/m/tiny\.en\.yaml:2: expected", files=NOT_YAML),
    # python -m tools.publish (refused before any network use)
    Row("publish-bad-manifest", "tools.publish", ("tiny.en-4bit", "--manifests", "{d}/m", "--build-dir", "{d}/b"),
        r"{d}/m/tiny\.en\.yaml:2: expected", files=NOT_YAML),
    Row("publish-unknown-variant", "tools.publish", ("tiny.en-3bit", "--manifests", "{d}/m", "--build-dir", "{d}/b"),
        r"{d}/m: no variant 'tiny\.en-3bit'", files=GOOD),
    Row("publish-names-and-all", "tools.publish", ("tiny.en-4bit", "--all", "--build-dir", "{d}/b"),
        r"^python -m tools\.publish: error: give variant NAMEs or --all \(not both\)"),
    Row("publish-not-built", "tools.publish", ("tiny.en-4bit", "--manifests", "{d}/m", "--build-dir", "{d}/b"),
        r"refused tiny\.en-4bit: {d}/b/tiny\.en-4bit: not built", status=1, files=GOOD),
    # python -m tools.convert
    Row("convert-unknown-family", "tools.convert", ("--torch-name-or-path", "tiny.fr", "--mlx-path", "{d}/out"),
        r"no model family 'tiny\.fr'", status=1),
    Row("convert-bad-dtype", "tools.convert", ("--torch-name-or-path", "tiny.en", "--dtype", "float8", "--mlx-path", "{d}/out"),
        r"^python -m tools\.convert: error: argument --dtype: invalid choice: 'float8'"),
    Row("convert-missing-pt", "tools.convert", ("--torch-name-or-path", "{d}/gone.pt", "--mlx-path", "{d}/out"),
        r"{d}/gone\.pt", status=1),
    # python -m tools.convert on transformers checkpoints (issue 18)
    Row("convert-revision-for-a-family", "tools.convert",
        ("--torch-name-or-path", "tiny.en", "--revision", "main", "--mlx-path", "{d}/out"),
        r"--revision: for a transformers checkpoint \(a directory or a Hub repo id\), not 'tiny\.en'$", status=1),
    Row("convert-malformed-sha256", "tools.convert",
        ("--torch-name-or-path", "{d}/hf", "--sha256", "config.json=abc", "--mlx-path", "{d}/out"),
        r"argument --sha256: expected FILE=SHA256 \(64 hex digits\), got 'config\.json=abc'"),
    Row("convert-not-whisper", "tools.convert", ("--torch-name-or-path", "{d}/hf", "--mlx-path", "{d}/out"),
        r"^error: {d}/hf: config\.json: model_type is 'bert', not 'whisper' \(not a Whisper checkpoint\)$",
        status=1, files={"hf/config.json": '{"model_type": "bert"}'}),
    Row("convert-unpinned-pickle", "tools.convert", ("--torch-name-or-path", "{d}/hf", "--mlx-path", "{d}/out"),
        r"^error: {d}/hf: pytorch_model\.bin: a pickle is unpickled only after its sha256 matched a pinned digest",
        status=1, files={"hf/config.json": WHISPER_CONFIG, "hf/pytorch_model.bin": "not unpickled"}),
    Row("convert-hf-dir-without-weights", "tools.convert", ("--torch-name-or-path", "{d}/hf", "--mlx-path", "{d}/out"),
        r"^error: {d}/hf: no weights \(model\.safetensors\.index\.json, model\.safetensors", status=1,
        files={"hf/config.json": WHISPER_CONFIG}),
]


def _environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "WHISPER_MLX_MANIFESTS"))}
    return env | {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_unused"}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_and_writes_nothing(row, tmp_path):
    d = tmp_path / "in put"  # a space in the path, too
    d.mkdir()
    for rel, text in row.files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    args = [a.replace("{d}", str(d)) for a in row.args]
    done = subprocess.run([sys.executable, "-m", row.command, *args], cwd=ROOT, env=_environ(),
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == row.status, done.stderr
    assert len(lines) == 1, done.stderr
    assert re.search(row.says.replace("{d}", re.escape(str(d))), lines[0]), lines[0]
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before  # nothing written, no --out made
