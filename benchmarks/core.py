"""What every benchmark here shares: the result row, the timer, and where a number came from.

- `Row`: one system measured on one thing (a model family and a case such as "clip30 greedy" or
  "decoder step, batch 1"), as a statistic over repeats with every repeat kept.
- `interleave`: the one timer. Runners take turns within each round and the order rotates every
  round, so a burst of load from elsewhere falls on all of them and the things a ratio compares
  are measured close together in time. A runner measures itself (a child process times its own
  transcription; an in-process runner wraps `timed`), so the overhead of calling it is not counted.
- Statistics: the fastest repeat (`min`) for same-run ratios, since interference on a shared
  machine only ever adds time; the median is kept beside it.

Stdlib only at import: the CPU benchmark's child process imports this module, and what it imports
counts toward that child's peak memory.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Mapping, TypeVar

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".cache" / "bench"

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

# metric name -> the Row attribute it reads
METRICS = {"time": "seconds", "load": "load_s", "peak_mb": "peak_mb"}


class BenchError(RuntimeError):
    """A benchmark that cannot run (bad baseline, missing system, failed child); one clear line."""


@dataclass
class Row:
    """One system measured on one thing, over interleaved repeats: the result row of every
    benchmark here (the CPU peers table, the CI check, the GPU side-by-side)."""

    family: str  # the model family (or random-weight shape) measured
    case: str  # what was measured: "clip30 greedy", "decoder step, batch 1"
    entry: str  # who: "system[@backend]:variant", e.g. "whisper_mlx:fp32", "openai-whisper:fp16"
    seconds: float  # the statistic over `times` named by `stat`
    median_s: float
    times: list[float] = field(default_factory=list)  # every timed repeat, in round order
    stat: str = "min"
    load_s: float | None = None  # model load, its own measurement (min over fresh processes)
    import_s: float | None = None
    peak_mb: float | None = None  # peak resident memory of the measuring process (min over repeats)
    wer: float | None = None  # the worst repeat's word error rate (percent) against the known text
    audio_s: float | None = None  # audio transcribed per repeat, for the real-time factor
    backend: str = ""  # the decoding backend that ran (whisper_mlx) or the peer's engine
    text: str = ""  # the first repeat's transcript
    note: str = ""

    @property
    def rtf(self) -> float | None:
        """Real-time factor: seconds of work per second of audio."""
        return self.seconds / self.audio_s if self.audio_s else None


def statistic(values: list[float], stat: str = "min") -> float:
    """The fastest value ("min") or the median ("median") of a non-empty list."""
    if not values:
        raise BenchError("no repeats to summarize")
    if stat == "min":
        return min(values)
    if stat == "median":
        return statistics.median(values)
    raise ValueError(f"unknown statistic {stat!r} (min, median)")


def make_row(family: str, case: str, entry: str, times: list[float], stat: str = "min", **fields) -> Row:
    """A Row from its repeats' times (seconds) and any other fields."""
    return Row(family=family, case=case, entry=entry, seconds=statistic(times, stat),
               median_s=statistics.median(times), times=list(times), stat=stat, **fields)


# ---- the timer ---------------------------------------------------------------------------------


def rotation(keys: list[K], round_index: int) -> list[K]:
    """The order of round `round_index`: the keys rotated left by round_index places."""
    if not keys:
        return []
    shift = round_index % len(keys)
    return keys[shift:] + keys[:shift]


def interleave(
    runners: Mapping[K, Callable[[], T]],
    repeats: int,
    warmup: int = 0,
    on_result: Callable[[K, int, T], None] | None = None,
) -> dict[K, list[T]]:
    """Call every runner `warmup` times (results dropped), then `repeats` rounds in which every
    runner runs once, in `rotation(keys, round)` order. Returns each runner's `repeats` results in
    round order; `on_result(key, round, result)` sees each timed result as it comes."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    keys = list(runners)
    for _ in range(warmup):
        for key in keys:
            runners[key]()
    results: dict[K, list[T]] = {key: [] for key in keys}
    for r in range(repeats):
        for key in rotation(keys, r):
            result = runners[key]()
            results[key].append(result)
            if on_result is not None:
                on_result(key, r, result)
    return results


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call; fn must block until its work (device work included) is done."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 2, stat: str = "median") -> float:
    """One in-process function through the timer: its `stat` over `repeats` calls, in seconds."""
    return statistic(interleave({"fn": lambda: timed(fn)}, repeats, warmup)["fn"], stat)


# ---- comparing rows ----------------------------------------------------------------------------


def find_row(rows: list[Row], family: str, case: str, entry: str) -> Row | None:
    return next((r for r in rows if (r.family, r.case, r.entry) == (family, case, entry)), None)


def metric_value(row: Row, metric: str) -> float | None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    return getattr(row, METRICS[metric])


def ratio(rows: list[Row], family: str, case: str, num: str, den: str, metric: str = "time") -> float | None:
    """num's metric over den's, both measured on the same family and case in the same run; None
    when either row or value is missing."""
    a, b = find_row(rows, family, case, num), find_row(rows, family, case, den)
    if a is None or b is None:
        return None
    x, y = metric_value(a, metric), metric_value(b, metric)
    if x is None or y is None or y == 0:
        return None
    return x / y


def round_ratios(a: Row, b: Row) -> list[float]:
    """a's time over b's in each round (the runs measured next to each other): their spread is the
    noise a same-run ratio carries."""
    return [x / y for x, y in zip(a.times, b.times) if y > 0]


# ---- where a number came from ------------------------------------------------------------------


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20 if sys.platform == "darwin" else 1024)


def machine(threads: int | None = None, dists: tuple[str, ...] = ()) -> dict:
    """What the numbers were measured on: CPU, cores, platform, package versions, git commit."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("mlx", "whisper-mlx", *dists):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
           "python": platform.python_version(), "load_avg_at_end": load_avg(), "versions": versions,
           "git": git_revision()}
    if threads is not None:
        out["threads"] = threads
    return out


def busy_warning(m: dict) -> str | None:
    """A warning line when the 15-minute load average exceeded the core count, else None."""
    load = m.get("load_avg_at_end") or [0.0]
    if m.get("cores") and load[-1] > m["cores"]:
        return (f"WARNING: the machine was busy (15-min load average {load[-1]} on {m['cores']} cores): "
                "other processes competed for the CPU, times are inflated and ratios unreliable.")
    return None


def git_revision() -> str | None:
    """The checkout's commit ("+dirty" with uncommitted changes to whisper_mlx/), or None."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "whisper_mlx"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty else "")) or None


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def write_atomic(path: Path, text: str) -> None:
    """Write a file by temp file + rename, so a failure leaves the old one intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
