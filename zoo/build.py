"""Build variants: source → convert → gates → card → checksums, incremental and atomic.

Each variant is built in a temp dir beside OUT/NAME and renamed into place when complete.
A variant is skipped when OUT/NAME holds eval.json and a checksums.json whose inputs (manifest
entry digest, source sha256, converter version) and file hashes still match.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import CONVERTER_VERSION, builddir
from .convert import atomic_dir, build_model, model_config, write_model_dir
from .manifest import Family, ManifestError, Variant, manifests_root, variants
from .sources import (
    Checkpoint,
    SourceError,
    describe,
    fingerprint,
    load_for_family,
    pick_source,
    recorded_pin,
    sha256_file,
)

BUILT_FILES = builddir.HASHED_FILES


@dataclass
class Outcome:
    """What happened to one variant in a build run."""

    name: str
    status: str  # built | up-to-date | offline-unavailable | error
    passed: bool | None = None
    detail: str = ""


def clips_cache_dir() -> Path:
    """Where synthesized gate clips are cached ($WHISPER_MLX_CACHE or ~/.cache/whisper-mlx)."""
    if os.environ.get("WHISPER_MLX_CACHE"):
        return Path(os.environ["WHISPER_MLX_CACHE"]).expanduser() / "clips"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "whisper-mlx" / "clips"


def select(names: list[str] | None, manifests_dir: Path | None = None,
           families: list[str] | None = None) -> list[Variant]:
    """The variants named plus every variant of the `families` named (all when neither is given), in
    manifest order; unknown names refused."""
    every = variants(manifests_dir)
    if families:
        known = dict.fromkeys(v.family.family for v in every)
        unknown = [f for f in families if f not in known]
        if unknown:
            raise ManifestError(f"{manifests_root(manifests_dir)}: no model family {unknown[0]!r} (known: {', '.join(known)})")
        names = list(names or []) + [v.name for v in every if v.family.family in families]
    if names is None:
        return every
    by_name = {v.name: v for v in every}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ManifestError(f"no variant named {', '.join(unknown)} (see python -m tools.build --list)")
    return [by_name[n] for n in dict.fromkeys(names)]


def inputs_of(variant: Variant, source_sha256: str) -> dict:
    """What determines a variant's output; unchanged inputs + complete dir = nothing to do. Publish
    checks the same record (variant, repo id, manifest digest) before anything goes up."""
    return {
        "variant": variant.name,
        "manifest_digest": variant.digest,
        "repo_id": variant.repo_id,  # the org may come from the environment; the card names it
        "source_sha256": source_sha256,
        "converter_version": CONVERTER_VERSION,
    }


def why_not_built(variant_dir: Path, inputs: dict | None = None) -> str | None:
    """None when the directory is a complete build (zoo.builddir) made from `inputs`; else why not."""
    return builddir.why_not(variant_dir, inputs)


def is_built(variant_dir: Path, inputs: dict | None = None) -> bool:
    """True when the directory is complete (eval.json, exactly the format's files, all hashed) and
    built from `inputs`."""
    return why_not_built(variant_dir, inputs) is None


def stored_result(variant_dir: Path) -> bool | None:
    """The `passed` flag of a built variant's eval.json."""
    try:
        return bool(json.loads((variant_dir / "eval.json").read_text())["passed"])
    except (OSError, ValueError, KeyError):
        return None


STALE_KINDS = ("tmp", "old", "scratch")  # atomic_dir's new and replaced dirs; an fp32 sibling measured unbuilt


def clean_stale(out: Path, name: str) -> None:
    """Remove the temp dirs an interrupted build of `name` left (`.NAME.tmp-*`, `.old-*`, `.scratch-*`)."""
    for kind in STALE_KINDS:
        for stale in out.glob(f".{glob.escape(name)}.{kind}-*"):
            shutil.rmtree(stale, ignore_errors=True)


def write_variant(
    variant: Variant, ckpt: Checkpoint, target: Path, evaluate_dir: Callable[[Path], dict], inputs: dict
) -> dict:
    """Convert into `target` (an empty dir), gate it, write card, eval.json and checksums.json."""
    from .card import render_card

    model = build_model(ckpt, variant.dtype, variant.q_bits, variant.q_group_size, variant.q_overrides)
    config = model_config(
        ckpt, variant.dtype, variant.q_bits, variant.q_group_size, variant.name, {"repo_id": variant.repo_id},
        variant.q_overrides,
    )
    write_model_dir(model, config, target)
    del model
    evaluation = evaluate_dir(target)
    evaluation["alignment_heads"] = {"heads": ckpt.alignment_heads, "from": ckpt.alignment_heads_from}
    card = render_card(variant, evaluation, ckpt.provenance, inputs["source_sha256"])
    (target / "README.md").write_text(card)
    (target / "eval.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False) + "\n")
    checksums = {
        "files": {f: sha256_file(target / f) for f in BUILT_FILES},
        "inputs": inputs,
        "provenance": ckpt.provenance,
        "manifest": variant.manifest_path.name,
    }
    (target / "checksums.json").write_text(json.dumps(checksums, indent=2) + "\n")
    return evaluation


def fp32_sibling(family: Family, all_variants: list[Variant]) -> Variant:
    """The family's unquantized float32 variant (the reference for ratio gates)."""
    for v in all_variants:
        if v.family.family == family.family and v.dtype == "float32" and v.q_bits is None:
            return v
    raise ManifestError(f"{family.path}: variants: no unquantized float32 variant (needed as the gates' baseline)")


def build_family(
    family: Family,
    wanted: list[Variant],
    out: Path,
    offline_only: bool,
    clips_dir: Path,
    manifests_dir: Path | None,
    log: Callable[[str], None],
) -> list[Outcome]:
    """Build the wanted variants of one family (skipping those up to date)."""
    from . import gates
    from .speech import make_clips

    for v in family.variants:  # what killed builds of this family left, whatever this run does
        clean_stale(out, v.name)
    # a Hub source the manifest leaves unpinned is read against what an earlier build into this
    # output recorded (the fp32 sibling's record first)
    fp32_first = sorted(family.variants, key=lambda v: v.dtype != "float32" or v.quantization is not None)
    records = [out / v.name for v in fp32_first]
    pins = {i: recorded_pin(s, records) for i, s in enumerate(family.sources) if s.kind == "transformers"}
    sources = pick_source(family, offline_only, pins)
    if not sources:
        needs = "; ".join(describe(s) for s in family.sources)
        why = f"not buildable offline: every source needs the network ({needs})"
        return [Outcome(v.name, "offline-unavailable", None, why) for v in wanted]
    source = sources[0]
    pin = pins.get(family.sources.index(source))
    source_sha256 = fingerprint(source, pin)  # None: a Hub source pinned by nothing yet
    outcomes, todo = [], []
    for v in wanted:
        v_inputs = inputs_of(v, source_sha256)
        if source_sha256 is not None and is_built(out / v.name, v_inputs):
            outcomes.append(Outcome(v.name, "up-to-date", stored_result(out / v.name), "inputs unchanged"))
        else:
            todo.append(v)
    if not todo:
        return outcomes

    log(f"{family.family}: loading {describe(source)}" + (f" ({pin.origin})" if pin else ""))
    ckpt = load_for_family(source, family, pin)
    if source_sha256 is None:
        source_sha256 = ckpt.source_sha256
        log(f"{family.family}: read {ckpt.provenance.get('repo')} at {ckpt.provenance.get('revision')} unpinned; "
            "recorded in checksums.json and on the card")
    log(f"{family.family}: synthesizing {len(family.gates.clips)} gate clips")
    clips = make_clips(clips_dir, family.gates.clips)
    log(f"{family.family}: {family.gates.reference} reference")
    reference = gates.reference_transcripts(ckpt, todo[0], clips)

    base = fp32_sibling(family, select(None, manifests_dir))
    todo.sort(key=lambda v: v.name != base.name)  # the fp32 sibling first: the others compare to it
    fp32_measure = None
    if base.name not in {v.name for v in todo}:
        log(f"{family.family}: measuring fp32 baseline {base.name}")
        if is_built(out / base.name, inputs_of(base, source_sha256)):
            fp32_measure = gates.measure(out / base.name, base, clips)
        else:
            with tempfile.TemporaryDirectory(dir=out, prefix=f".{base.name}.scratch-") as scratch:
                model = build_model(ckpt, base.dtype)
                write_model_dir(model, model_config(ckpt, base.dtype, None, 64, base.name, None), Path(scratch))
                del model
                fp32_measure = gates.measure(Path(scratch), base, clips)

    for v in todo:
        log(f"{v.name}: converting and gating")

        def evaluate_dir(d: Path, v=v) -> dict:
            nonlocal fp32_measure
            log(f"{v.name}: gating {d}")
            m = gates.measure(d, v, clips, reference)
            if v.name == base.name:
                fp32_measure = m
            return gates.evaluate(v, clips, reference, m, fp32_measure)

        try:
            with atomic_dir(out / v.name) as tmp:
                evaluation = write_variant(v, ckpt, tmp, evaluate_dir, inputs_of(v, source_sha256))
        except (OSError, ValueError, RuntimeError) as e:
            outcomes.append(Outcome(v.name, "error", None, str(e)))
            continue
        m = evaluation["metrics"]
        detail = f"WER {m['wer']}% (fp32 {m['fp32_wer']}%), identical {m['identical_clips']}/{m['clips']}, RTF {m['rtf']}"
        outcomes.append(Outcome(v.name, "built", evaluation["passed"], detail))
    return outcomes


def build(
    names: list[str] | None,
    out: Path,
    offline_only: bool = False,
    manifests_dir: Path | None = None,
    clips_dir: Path | None = None,
    log: Callable[[str], None] = print,
    families: list[str] | None = None,
) -> list[Outcome]:
    """Build the named variants and every variant of the named families (neither: all) into
    OUT/NAME; one Outcome per variant. Manifests and names are validated before anything is
    written (OUT included)."""
    out = Path(out)
    wanted = select(names, manifests_dir, families)
    out.mkdir(parents=True, exist_ok=True)
    families: dict[str, tuple[Family, list[Variant]]] = {}
    for v in wanted:
        families.setdefault(v.family.family, (v.family, []))[1].append(v)
    outcomes: list[Outcome] = []
    for family, vs in families.values():
        try:
            outcomes += build_family(
                family, vs, out, offline_only, Path(clips_dir or clips_cache_dir()), manifests_dir, log
            )
        except (SourceError, ManifestError, OSError, RuntimeError, ValueError) as e:
            outcomes += [Outcome(v.name, "error", None, str(e)) for v in vs]
    order = {v.name: i for i, v in enumerate(wanted)}
    return sorted(outcomes, key=lambda o: order[o.name])


def summary(outcomes: list[Outcome]) -> str:
    """A plain-text table: variant, status, gates, detail."""
    rows = [("variant", "status", "gates", "detail")]
    for o in outcomes:
        gate = {True: "pass", False: "FAIL", None: "-"}[o.passed]
        rows.append((o.name, o.status, gate, o.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3] for r in rows
    )


def exit_code(outcomes: list[Outcome]) -> int:
    """Non-zero when any gate failed or any variant errored (offline-unavailable is not an error)."""
    return 1 if any(o.passed is False or o.status == "error" for o in outcomes) else 0


def listing(manifests_dir: Path | None = None) -> list[str]:
    """One line per variant, name first: repo id, dtype/quantization, source kinds. Only the
    manifests are read: no source is resolved (a build does that; --offline-only says which build)."""
    lines = []
    for v in variants(manifests_dir):
        quant = f"{v.q_bits}bit/g{v.q_group_size}" if v.q_bits else "-"
        kinds = "+".join(dict.fromkeys(s.kind for s in v.family.sources))
        lines.append(f"{v.name}\t{v.repo_id}\t{v.dtype}\t{quant}\t{kinds}")
    return lines
