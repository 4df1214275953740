"""Manifests: the real ones are complete and agree with openai-whisper; bad ones are refused clearly."""

from __future__ import annotations

import base64
import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from zoo.manifest import (
    DEFAULTS_FILE,
    MANIFESTS_DIR,
    ManifestError,
    find_variant,
    load_manifests,
    variant_name,
    variants,
)

OPENAI_FAMILIES = ["tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
                   "large-v1", "large-v2", "large-v3", "large-v3-turbo"]
DISTIL_FAMILIES = ["distil-large-v3", "distil-large-v3.5", "distil-medium.en", "distil-small.en"]
FAMILIES = OPENAI_FAMILIES + DISTIL_FAMILIES


def test_real_manifests_cover_every_family_and_variant():
    families = load_manifests()
    assert sorted(f.family for f in families) == sorted(FAMILIES)
    names = [v.name for v in variants()]
    assert len(names) == 64 == len(set(names))
    for family in FAMILIES:
        for suffix in ("fp16", "fp32", "8bit", "4bit"):
            v = find_variant(f"{family}-{suffix}")
            assert v.repo_id == f"whisper-mlx/whisper-{family}-{suffix}"
            assert (v.q_bits, v.dtype) == {
                "fp16": (None, "float16"), "fp32": (None, "float32"), "8bit": (8, "float16"), "4bit": (4, "float16")
            }[suffix]
            if v.q_bits:
                assert v.q_group_size == 64
    assert len({v.repo_id for v in variants()}) == 64


def test_manifests_agree_with_openai_whisper():
    """Dims, URL + sha256 and alignment heads match openai-whisper's own tables."""
    import whisper

    for family in load_manifests():
        if family.family not in OPENAI_FAMILIES:
            continue
        openai = next(s for s in family.sources if s.kind == "openai")
        assert openai.url == whisper._MODELS[family.family]
        assert openai.sha256 == openai.url.split("/")[-2]
        mask = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[family.family])), dtype=bool)
        mask = mask.reshape(family.dims.n_text_layer, family.dims.n_text_head)
        assert [list(map(int, x)) for x in np.argwhere(mask)] == family.alignment_heads
        assert (family.language == "en") == family.family.endswith(".en")


def test_distil_families_are_their_parents_with_a_two_layer_decoder():
    """Issue 18 point 3: each Distil-Whisper family has its parent's encoder dims and vocabulary
    with 2 decoder layers, reads the distil repo from the Hub (unpinned, said explicitly: the Hub
    cannot be reached where the manifests were written), names that repo as base_model, and is
    gated against transformers: the fp32 variant's logits within 1e-4 and greedy tokens identical,
    the quantized ones by WER delta against the fp32 sibling."""
    parents = {"distil-large-v3": "large-v3", "distil-large-v3.5": "large-v3", "distil-medium.en": "medium.en",
               "distil-small.en": "small.en"}
    families = {f.family: f for f in load_manifests()}
    for name, parent in parents.items():
        family, dims = families[name], families[parent].dims.model_dump()
        assert family.dims.model_dump() == {**dims, "n_text_layer": 2}, name
        assert family.language == "en" and family.alignment_heads is None
        assert family.base_model == f"distil-whisper/{name}"
        [source] = family.sources
        assert (source.kind, source.repo, source.revision, source.sha256) == (
            "transformers", f"distil-whisper/{name}", "unpinned", "unpinned")
        assert family.gates.reference == "transformers"
        by_suffix = {v.suffix: v for v in variants() if v.family.family == name}
        assert list(by_suffix) == ["fp16", "fp32", "8bit", "4bit"]
        assert by_suffix["fp32"].thresholds.max_logit_diff == 1e-4
        assert by_suffix["fp32"].thresholds.identical_to_reference is True
        assert by_suffix["4bit"].thresholds.max_wer_delta == 3.0 and by_suffix["8bit"].thresholds.max_wer_delta == 1.0
        assert by_suffix["4bit"].thresholds.max_logit_diff is None
    # the large ones are English-only models on large-v3's multilingual vocabulary
    assert families["distil-large-v3"].dims.n_vocab == 51866


def test_fields_added_later_leave_old_dumps_alone(tmp_path):
    """The gates' reference and max_logit_diff are left out of a dump while at their defaults, so
    the families that do not use them keep their digests (their builds stay current)."""
    family = next(f for f in load_manifests() if f.family == "tiny.en")
    dumped = family.model_dump(mode="json")
    assert "reference" not in dumped["gates"] and "max_logit_diff" not in dumped["gates"]["thresholds"]
    distil = next(f for f in load_manifests() if f.family == "distil-small.en").model_dump(mode="json")
    assert distil["gates"]["reference"] == "transformers"
    assert distil["variants"][1]["gates"]["max_logit_diff"] == 1e-4


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("revision"), r"revision: missing for Hub repo distil-whisper/distil-small\.en: pin a commit sha"),
    (lambda s: s.update(revision="main"), r"'main' is not a commit sha \(40 hex digits\) nor 'unpinned'"),
    (lambda s: s.pop("sha256"), r"sha256: missing for Hub repo distil-whisper/distil-small\.en"),
    (lambda s: s.update(path="/models/x"), r"give either repo \(a Hub repo id\) or path"),
    (lambda s: s.update(repo="not a repo"), r"sources\.0\.transformers\.repo: String should match pattern"),
    (lambda s: s.update(sha256={"config.json": "abc"}), r"sources\.0\.transformers\.sha256"),
])
def test_transformers_source_is_validated(tmp_path, change, message):
    d = _copy(tmp_path, "distil-small.en")
    _edit(d / "distil-small.en.yaml", lambda x: change(x["sources"][0]))
    with pytest.raises(ManifestError, match=message) as e:
        load_manifests(d)
    assert str(e.value).startswith(f"{d / 'distil-small.en.yaml'}: sources.0") and "\n" not in str(e.value)


def test_gate_thresholds_per_variant_override_family_defaults():
    tiny = {v.suffix: v.thresholds for v in variants() if v.size == "tiny.en"}
    assert tiny["fp32"].identical_to_reference and tiny["fp16"].identical_to_reference
    assert tiny["8bit"].max_wer_delta == 1.0 and not tiny["8bit"].identical_to_reference
    assert tiny["4bit"].max_wer_delta == 3.0
    assert tiny["4bit"].max_rtf_ratio == tiny["fp32"].max_rtf_ratio  # inherited from the family


def test_org_is_configurable(monkeypatch):
    monkeypatch.setenv("WHISPER_MLX_ZOO_ORG", "my-org")
    assert find_variant("base-4bit").repo_id == "my-org/whisper-base-4bit"


def _copy(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / "manifests"
    d.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(MANIFESTS_DIR / f"{name}.yaml", d / f"{name}.yaml")
    shutil.copy(MANIFESTS_DIR / DEFAULTS_FILE, d / DEFAULTS_FILE)
    return d


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d["dims"].update(n_mels="eighty"), "dims.n_mels"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["variants"].update({"8bit": {"quantization": {"bits": 7}}}), "variants.8bit.quantization.bits"),
        (lambda d: d["variants"]["4bit"]["quantization"].update(embedding_bits=7),
         "variants.4bit.quantization.embedding_bits"),
        (lambda d: d["variants"].update(fp16={"dtype": "float8"}), "variants.fp16.dtype"),
        (lambda d: d["variants"].update(fp16={"colour": "blue"}), "variants.fp16.colour"),
        (lambda d: d["variants"].update(fp16={"name": "tiny.en-half"}), "variants.fp16.name"),
        (lambda d: d["variants"].update(fp16=[]), "variants.fp16"),
        (lambda d: d.update(variants=[{"name": "tiny.en-fp16", "dtype": "float16"}]), "variants"),
        (lambda d: d["sources"][0].update(sha256="not-a-hash"), "sources.0.openai.sha256"),
        (lambda d: d["sources"][1].update(location=["meeting noter; rm -rf ~"]), "sources.1.ctranslate2.location.0"),
        (lambda d: d.update(gates={"thresholds": {"max_rtf_ratio": -1}}), "gates.thresholds.max_rtf_ratio"),
        (lambda d: d.update(gates=["en_weather"]), "gates"),
        (lambda d: d.update(license="gpl-3.0"), "license"),
        (lambda d: d.pop("base_model"), "base_model"),
    ],
)
def test_schema_errors_name_file_and_field(tmp_path, change, field):
    d = _copy(tmp_path, "tiny.en")
    _edit(d / "tiny.en.yaml", change)
    with pytest.raises(ManifestError) as e:
        load_manifests(d)
    assert str(e.value).startswith(f"{d / 'tiny.en.yaml'}: {field}: ")
    assert "\n" not in str(e.value)


def test_consistency_errors(tmp_path):
    d = _copy(tmp_path, "tiny.en")
    _edit(d / "tiny.en.yaml", lambda x: x.update(language="multilingual"))
    with pytest.raises(ManifestError, match="contradicts dims.n_vocab 51864"):
        load_manifests(d)
    d = _copy(tmp_path, "tiny.en")
    _edit(d / "tiny.en.yaml", lambda x: x["alignment_heads"].append([4, 0]))
    with pytest.raises(ManifestError, match=r"alignment head \[4, 0\] is outside"):
        load_manifests(d)
    # a variant keyed by a suffix its recipe does not make
    d = _copy(tmp_path, "tiny.en")
    _edit(d / "tiny.en.yaml", lambda x: x["variants"]["4bit"]["quantization"].update(bits=3))
    with pytest.raises(ManifestError, match=r"tiny\.en\.yaml: variants\.4bit: the recipe makes a '3bit' variant, not '4bit'"):
        load_manifests(d)


@pytest.mark.parametrize(
    "text, says",
    [
        ("family: [unclosed\n", r":2: expected ',' or '\]', but got '<stream end>' \(in a flow sequence from line 1\)$"),
        ("family: tiny.en\n  language: en\n", r":2: mapping values are not allowed here$"),
        ("family: tiny.en\nfamily: tiny\n", r":2: duplicate key 'family' \(first at line 1\)$"),
        ("family: tiny.en\nvariants:\n  4bit:\n    dtype: float32\n    dtype: float16\n",
         r":5: duplicate key 'dtype' \(first at line 4\)$"),
        ("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n  b: 3\n", r":5: duplicate key 'b' \(first at line 4\)$"),
        ("family: tiny.en\ngates: {clips: [en_weather], clips: [ho_park]}\n", r":2: duplicate key 'clips' \(first at line 2\)$"),
    ],
    ids=["unclosed", "bad-indent", "duplicate-top-level", "duplicate-nested", "duplicate-after-merge", "duplicate-flow"],
)
def test_yaml_errors_are_one_line_with_file_and_line(tmp_path, text, says):
    """Issue 17 point 7: `dtype: float32` then `dtype: float16` built the fp32 variant as float16;
    duplicate keys are refused with their line, and every YAML error is one line: file:line: problem."""
    d = _copy(tmp_path)
    (d / "x.yaml").write_text(text)
    with pytest.raises(ManifestError) as e:
        load_manifests(d)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{d / 'x.yaml'}:")
    assert re.search(says, message), message


def test_yaml_merge_keys_may_be_overridden_once(tmp_path):
    """A key written once beside a `<<` merge overrides the merged value (YAML's rule), not a duplicate."""
    from zoo.manifest import _read_yaml

    (tmp_path / "m.yaml").write_text("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 5\n")
    assert _read_yaml(tmp_path / "m.yaml") == {"a": {"b": 1, "c": 2}, "d": {"b": 5, "c": 2}}


def test_duplicate_variant_names_and_repo_ids_are_refused(tmp_path):
    d = _copy(tmp_path, "tiny", "tiny.en")
    _edit(d / "tiny.yaml", lambda x: x.update(variants={"fp16": {"repo": "whisper-tiny.en-fp16"}}))
    with pytest.raises(ManifestError) as e:
        load_manifests(d)
    assert "repo 'whisper-tiny.en-fp16' is already defined in" in str(e.value)
    assert "tiny.en.yaml" in str(e.value) and "tiny.yaml" in str(e.value)

    d = _copy(tmp_path, "tiny.en")
    shutil.copy(d / "tiny.en.yaml", d / "tiny.en-copy.yaml")
    with pytest.raises(ManifestError, match="family 'tiny.en' is already defined"):
        load_manifests(d)


def test_variant_digest_tracks_only_its_own_inputs(tmp_path):
    d = _copy(tmp_path, "tiny.en")
    before = {v.name: v.digest for v in variants(d)}
    _edit(d / "tiny.en.yaml", lambda x: x["variants"]["4bit"].update(gates={"max_wer_delta": 2.0}))
    after = {v.name: v.digest for v in variants(d)}
    assert [n for n in before if before[n] != after[n]] == ["tiny.en-4bit"]
    _edit(d / "tiny.en.yaml", lambda x: x.update(gates={"clips": ["en_weather"]}))
    assert all(after[v.name] != v.digest for v in variants(d))


def test_gate_clips_are_declared_speech_clips():
    from zoo.speech import load_specs

    specs = load_specs()
    for family in load_manifests():
        assert set(family.gates.clips) <= set(specs), family.family
        languages = {specs[c].language for c in family.gates.clips}
        assert languages == {"en"} if family.language == "en" else len(languages) > 1


def test_tiny_en_4bit_keeps_its_embedding_at_8_bits():
    """tiny.en at 4 bits throughout loops on long audio; its manifest keeps the tied embedding
    (the output projection too) at 8 bits, which reaches the converter as a per-module override."""
    by_name = {v.name: v for v in variants()}
    assert by_name["tiny.en-4bit"].q_overrides == {"decoder.token_embedding": {"bits": 8, "group_size": 64}}
    assert by_name["tiny.en-8bit"].q_overrides == {} and by_name["tiny.en-fp32"].q_overrides == {}


def test_expanded_manifests_equal_the_recorded_expansion(monkeypatch):
    """The manifests expand to exactly the families, variants, recipes, gates, repo ids and digests
    recorded in tests/fixtures/manifests_expanded.json (captured from the hand-written files before
    the shared defaults existed): moving what is shared into one place changed nothing built."""
    import json

    monkeypatch.delenv("WHISPER_MLX_ZOO_ORG", raising=False)
    recorded = json.loads((Path(__file__).parent / "fixtures" / "manifests_expanded.json").read_text())
    families = {f.family: f.model_dump(mode="json") for f in load_manifests()}
    assert families == recorded["families"]
    now = [
        {"name": v.name, "family": v.family.family, "manifest": v.manifest_path.name, "repo_id": v.repo_id,
         "dtype": v.dtype, "q_bits": v.q_bits, "q_group_size": v.q_group_size, "q_overrides": v.q_overrides,
         "thresholds": v.thresholds.model_dump(mode="json"), "digest": v.digest}
        for v in variants()
    ]
    assert now == recorded["variants"]


def test_variant_name_is_the_one_naming_rule():
    assert variant_name("tiny.en", "float16", None) == "tiny.en-fp16"
    assert variant_name("large-v3", "float32", None) == "large-v3-fp32"
    assert variant_name("base", "float16", 8) == "base-8bit"
    assert variant_name("base", "bfloat16", None) == "base-bf16"
    for v in variants():
        assert v.name == variant_name(v.family.family, v.dtype, v.q_bits)


def test_family_files_hold_only_what_differs_from_the_defaults():
    """Shared values are written once: a family file repeats no default (gates, license, recipes)."""
    defaults = yaml.safe_load((MANIFESTS_DIR / DEFAULTS_FILE).read_text())

    def repeats(over, base, where):
        if isinstance(over, dict) and isinstance(base, dict):
            return [r for k, v in over.items() if k in base for r in repeats(v, base[k], f"{where}.{k}")]
        return [where] if over == base else []

    for path in sorted(MANIFESTS_DIR.glob("[!_]*.yaml")):
        data = yaml.safe_load(path.read_text())
        base = {**defaults, "gates": {**defaults["gates"], "clips": defaults["gates"]["clips"][data["language"]]}}
        assert repeats({k: v for k, v in data.items() if k in base}, base, path.name) == [], path.name
    assert sum(path.read_text().count("max_wer_delta") for path in MANIFESTS_DIR.glob("[!_]*.yaml")) == 0


def test_family_leaves_out_changes_and_adds_variants(tmp_path):
    d = _copy(tmp_path, "base")
    _edit(d / "base.yaml", lambda x: x.update(
        variants={"8bit": None, "fp32": {"gates": {"identical_to_reference": None, "max_wer": 5.0}},
                  "bf16": {"dtype": "bfloat16", "gates": {"max_wer_delta": 0.5}}},
        gates={"clips": ["en_weather", "de_train"], "thresholds": {"max_memory_ratio": 2.0}}))
    by_name = {v.name: v for v in variants(d)}
    assert list(by_name) == ["base-fp16", "base-fp32", "base-4bit", "base-bf16"]
    assert by_name["base-fp32"].thresholds.model_dump(exclude_none=True) == {
        "max_wer": 5.0, "max_rtf_ratio": 3.0, "max_memory_ratio": 2.0}
    assert by_name["base-bf16"].dtype == "bfloat16" and by_name["base-bf16"].q_bits is None
    assert by_name["base-bf16"].thresholds.max_wer_delta == 0.5
    assert by_name["base-4bit"].thresholds.max_wer_delta == 3.0
    assert by_name["base-4bit"].family.gates.clips == ["en_weather", "de_train"]
    # a variant only this family declares needs a whole recipe
    _edit(d / "base.yaml", lambda x: x.update(variants={"3bit": {"quantization": {"bits": 3}}}))
    with pytest.raises(ManifestError, match=r"base\.yaml: variants\.3bit\.dtype: Field required"):
        load_manifests(d)


def test_defaults_file_is_required_and_validated(tmp_path):
    d = _copy(tmp_path, "tiny.en")
    (d / DEFAULTS_FILE).unlink()
    with pytest.raises(ManifestError, match=f"{d / DEFAULTS_FILE}: missing"):
        load_manifests(d)
    d = _copy(tmp_path, "tiny.en")
    _edit(d / DEFAULTS_FILE, lambda x: x["variants"].update({"8bit": x["variants"]["4bit"]}))
    with pytest.raises(ManifestError, match=f"{d / DEFAULTS_FILE}: variants.8bit: the recipe makes a '4bit'"):
        load_manifests(d)
    d = _copy(tmp_path, "tiny.en")
    _edit(d / DEFAULTS_FILE, lambda x: x["gates"]["thresholds"].update(max_wer="low"))
    with pytest.raises(ManifestError, match=f"{d / DEFAULTS_FILE}: gates.thresholds.max_wer: "):
        load_manifests(d)
