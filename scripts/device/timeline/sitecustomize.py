"""Probe (not shipped): with PROBE_LOG set and this folder first on PYTHONPATH, every Python process
(the corpus driver, Ray's workers) appends "<unix time> <pid> <event>" lines to PROBE_LOG: its
start, and the start and end of a few calls of whisper_mlx's corpus path. For reading where the
time before a corpus pass's first rows goes (scripts/device/corpus_startup.sh, corpus_first_rows.sh)."""

import builtins
import functools
import os
import sys
import time

LOG = os.environ.get("PROBE_LOG")
# module -> (attribute path, ...) wrapped once the module has finished importing
WATCH = {
    "ray": ("init",),
    "whisper_mlx.corpus": ("plan_tasks", "task_dataset", "_write"),
    "whisper_mlx.ray": ("Transcriber.__init__", "TaskTranscriber.__call__"),
    "whisper_mlx.load": ("load_model",),
}
GENERATORS = {"whisper_mlx.batched": ("transcribe_many",)}  # logged at their first item and their end


def _log(event: str) -> None:
    with open(LOG, "a") as f:
        f.write(f"{time.time():.3f} {os.getpid()} {event}\n")


def _size(args) -> str:
    """A task's size, for TaskTranscriber.__call__(self, batch)."""
    try:
        return f" ({sum(len(task) for task in args[1]['paths'])} files)"
    except Exception:
        return ""


def _wrap(owner, name: str, label: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def timed(*args, **kwargs):
        _log(f"{label} start{_size(args)}")
        try:
            return inner(*args, **kwargs)
        finally:
            _log(f"{label} end")

    setattr(owner, name, timed)


def _wrap_generator(owner, name: str, label: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def timed(*args, **kwargs):
        first = True
        for item in inner(*args, **kwargs):
            if first:
                _log(f"{label} first item")
                first = False
            yield item
        _log(f"{label} end")

    setattr(owner, name, timed)


if LOG:
    _log("python " + " ".join(a.rsplit("/", 1)[-1] for a in sys.argv[:3])[:100])
    _done: set[str] = set()
    _import = builtins.__import__

    def _patching_import(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        for watched, attrs in [*WATCH.items(), *GENERATORS.items()]:
            mod = sys.modules.get(watched)
            last = attrs[-1].split(".")[0]
            if watched in _done or mod is None or not hasattr(mod, last):
                continue
            _done.add(watched)
            for attr in attrs:
                *path, leaf = attr.split(".")
                owner = mod
                for part in path:
                    owner = getattr(owner, part)
                wrap = _wrap_generator if watched in GENERATORS else _wrap
                wrap(owner, leaf, f"{watched.rsplit('.', 1)[-1]}.{attr}")
        return module

    builtins.__import__ = _patching_import
