"""The CI speed check: same-run ratios against a committed baseline (`benchmarks/baseline.json`).

A baseline names rows (family, clip, decoding setup, a ratio of two entries, a metric: time, load
or peak memory) with the value recorded on a quiet machine. The check measures exactly what the
rows need, interleaved, a fresh process per repeat, and fails a row whose same-run ratio (fastest
repeat over fastest repeat) exceeds value * (1 + tolerance); whisper_mlx's WER over max_wer fails
too. Ratios, not seconds, so a slower or busier CI machine does not fail it.

`PLAN` is what a new baseline records (`python -m tools.bench --save-baseline PATH`), unless rows
are taken from an existing baseline (`--rows-from`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from benchmarks import cpu
from benchmarks.core import DEFAULT_CACHE, BenchError, ratio

# The CI check's rows: (family, clip, setup, ratio, metric). Kept to a few minutes on 2 cores.
PLAN: tuple[tuple[str, str, str, str, str], ...] = (
    ("tiny.en", "clip30", "greedy", "whisper_mlx:fp32/faster-whisper:fp32", "time"),
    ("tiny.en", "clip30", "greedy", "whisper_mlx:fp32/faster-whisper:fp32", "load"),
    ("tiny.en", "clip30", "greedy", "whisper_mlx:fp32/faster-whisper:fp32", "peak_mb"),
    ("tiny.en", "clip30", "greedy", "whisper_mlx:4bit/whisper_mlx:fp32", "time"),
    ("tiny.en", "clip30", "beam5", "whisper_mlx:fp32/faster-whisper:fp32", "time"),
    ("tiny.en", "clip30", "words", "whisper_mlx:fp32/faster-whisper:fp32", "time"),
    ("base", "clip30", "greedy", "whisper_mlx:fp32/faster-whisper:fp32", "time"),
    # batching needs several chunks, hence the long clip
    ("tiny.en", "bench_long", "batch8", "whisper_mlx:fp32/faster-whisper:fp32", "time"),
)

Metric = Literal["time", "load", "peak_mb"]
WHAT = {"time": "speed", "load": "load-time", "peak_mb": "memory"}


class CheckRow(BaseModel):
    """One checked ratio: `ratio` = "num/den" entries ("system[@backend]:variant") measured on
    `family`, `clip` and `setup` in the same run, compared on `metric`."""

    model_config = ConfigDict(extra="forbid")

    family: str
    clip: str
    setup: str = "greedy"
    ratio: str
    metric: Metric = "time"
    value: float = Field(gt=0)
    tolerance: float | None = Field(default=None, ge=0)  # this row's own (default: the file's)

    @field_validator("clip")
    @classmethod
    def _known_clip(cls, v: str) -> str:
        if v not in cpu.CLIPS:
            raise ValueError(f"unknown clip {v!r} (known: {', '.join(cpu.CLIPS)})")
        return v

    @field_validator("setup")
    @classmethod
    def _known_setup(cls, v: str) -> str:
        if v not in cpu.SETUPS:
            raise ValueError(f"unknown setup {v!r} (known: {', '.join(cpu.SETUPS)})")
        return v

    @field_validator("ratio")
    @classmethod
    def _entries(cls, v: str) -> str:
        num, sep, den = v.partition("/")
        if not sep:
            raise ValueError(f"{v!r} is not 'system:variant/system:variant'")
        if cpu.Entry.parse(num) == cpu.Entry.parse(den):
            raise ValueError(f"{v!r} compares an entry with itself")
        return v

    @property
    def entries(self) -> tuple[cpu.Entry, cpu.Entry]:
        num, den = self.ratio.split("/")
        return cpu.Entry.parse(num), cpu.Entry.parse(den)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.family, self.clip, self.setup, self.ratio, self.metric)

    @property
    def label(self) -> str:
        return f"{self.family} {self.clip} {self.setup} {self.ratio} ({self.metric})"


class Baseline(BaseModel):
    """benchmarks/baseline.json."""

    model_config = ConfigDict(extra="forbid")

    repeats: int = Field(default=5, ge=1)  # interleaved repeats; each row compares the fastest
    threads: int = Field(default=2, ge=1)
    tolerance: float = Field(ge=0)
    max_wer: float | None = Field(default=None, ge=0)  # whisper_mlx's WER cap: fast but wrong fails
    rows: list[CheckRow] = Field(min_length=1)
    measured: dict | None = None  # provenance: command, machine, per-round spread (not checked)

    @model_validator(mode="after")
    def _no_duplicates(self) -> "Baseline":
        seen = set()
        for i, row in enumerate(self.rows):
            if row.key in seen:
                raise ValueError(f"rows.{i}: {row.label} is listed twice")
            seen.add(row.key)
        return self

    def measures(self) -> list[cpu.Measure]:
        """What the rows need measured, each once, in the rows' order."""
        out = []
        for row in self.rows:
            for entry in row.entries:
                out.append(cpu.Measure(row.family, row.clip, row.setup, entry))
        return list(dict.fromkeys(out))


def load_baseline(path: Path) -> Baseline:
    """Read and validate a baseline file; errors name the file and the field."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise BenchError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: not valid JSON ({e})") from None
    try:
        return Baseline.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        raise BenchError(f"{path}: field {where}: {msg}") from None


def plan_baseline(rows: list[tuple[str, str, str, str, str]], tolerance: float, repeats: int = 5,
                  threads: int = 2, max_wer: float | None = None) -> Baseline:
    """A baseline whose rows are to be measured (values 1.0 until measured)."""
    return Baseline(repeats=repeats, threads=threads, tolerance=tolerance, max_wer=max_wer,
                    rows=[CheckRow(family=f, clip=c, setup=s, ratio=r, metric=m, value=1.0) for f, c, s, r, m in rows])


def measure(baseline: Baseline, cache: Path = DEFAULT_CACHE, repeats: int | None = None, log=None) -> dict:
    """Measure what the baseline's rows need: its repetitions, interleaved."""
    return cpu.run_bench(baseline.measures(), repeats=repeats or baseline.repeats, threads=baseline.threads,
                         cache=cache, log=log)


def evaluate(result: dict, baseline: Baseline) -> list[dict]:
    """Each row's same-run value against its limit: {"row", "value", "baseline", "limit", "ok",
    "round_ratios"}; "value" None when the run lacks a side."""
    rows = cpu.rows_from(result)
    out = []
    for row in baseline.rows:
        num, den = row.ratio.split("/")
        case = cpu.case_name(row.clip, row.setup)
        value = ratio(rows, row.family, case, num, den, row.metric)
        tolerance = baseline.tolerance if row.tolerance is None else row.tolerance
        limit = row.value * (1 + tolerance)
        out.append({"row": row.label, "metric": row.metric, "value": value, "baseline": row.value,
                    "tolerance": tolerance, "limit": limit, "ok": value is not None and value <= limit,
                    "round_ratios": cpu.round_ratios(result["runs"], row.family, case, num, den, row.metric)})
    return out


def failures(result: dict, baseline: Baseline) -> list[str]:
    """One line per failed row (over its limit, or not measured) and per whisper_mlx row whose WER
    exceeds max_wer; empty: the check passes."""
    lines = []
    for e in evaluate(result, baseline):
        if e["value"] is None:
            lines.append(f"{e['row']}: not measured")
        elif not e["ok"]:
            lines.append(f"{WHAT[e['metric']]} regression: {e['row']} = {e['value']:.3f} exceeds baseline "
                         f"{e['baseline']:.3f} x (1 + {e['tolerance']:g}) = {e['limit']:.3f}")
    if baseline.max_wer is not None:
        for row in cpu.rows_from(result):
            if row.entry.startswith("whisper_mlx") and row.wer > baseline.max_wer:
                lines.append(f"accuracy: {row.entry} WER {row.wer:.1f}% on {row.family} {row.case} "
                             f"exceeds max_wer {baseline.max_wer:g}%")
    return lines


def report(result: dict, baseline: Baseline) -> str:
    """One line per row: ok or miss, the value, its limit and the per-round ratios' range."""
    lines = []
    for e in evaluate(result, baseline):
        rr = e["round_ratios"]
        spread = f"; per round {min(rr):.3f}-{max(rr):.3f}" if rr else ""
        value = "not measured" if e["value"] is None else f"{e['value']:.3f}"
        lines.append(f"{'ok  ' if e['ok'] else 'miss'} {e['row']}: {value} (baseline {e['baseline']:.3f}, "
                     f"limit {e['limit']:.3f}{spread})")
    return "\n".join(lines)


def baseline_from(result: dict, template: Baseline, command: str, tolerance: float | None = None,
                  max_wer: float | None = None) -> dict:
    """A baseline file's contents: the template's rows with this run's values. Provenance records
    the command, the machine, each row's per-round spread (max/min - 1 of the per-round ratios:
    keep the tolerance well above it) and the rows' times."""
    rows, spread = [], {}
    for e, row in zip(evaluate(result, template), template.rows):
        if e["value"] is None:
            raise BenchError(f"{row.label}: not measured in this run")
        rows.append(row.model_copy(update={"value": round(e["value"], 3)}).model_dump(exclude_none=True))
        rr = e["round_ratios"]
        spread[row.label] = round(max(rr) / min(rr) - 1, 3) if rr else None
    return {
        "repeats": result["config"]["repeats"],
        "threads": result["config"]["threads"],
        "tolerance": template.tolerance if tolerance is None else tolerance,
        "max_wer": template.max_wer if max_wer is None else max_wer,
        "rows": rows,
        "measured": {"command": command, "machine": result["machine"], "round_spread": spread,
                     "seconds": {f"{r.family} {r.case} {r.entry}": round(r.seconds, 3) for r in cpu.rows_from(result)}},
    }
