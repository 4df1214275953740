"""`whisper-mlx corpus INPUT... --output DIR`: many files through Ray Data, one row per file.

Inputs (files, directories searched for audio and video files, globs) become rows of paths; an
actor pool of `whisper_mlx.ray.Transcriber`s transcribes them with the batched decoder and Ray
Data's writers store the rows in DIR as Parquet or JSON lines (schema: whisper_mlx.ray). A file
that fails is an error row (and one line on stderr); the others go on.

Resumable: the rows already in DIR name their inputs, and a rerun transcribes only the inputs
without one. Ray writes each block's file in place, so a run killed mid-write can leave a
truncated file: the next run moves it to DIR/.incomplete/ and transcribes its inputs again.
Subtitle files (--subtitles) are written by this process from the rows, so they follow the rows
on a rerun too.

Without --address a local Ray cluster is started for the run (no dashboard, on 127.0.0.1 only)
and stopped after it.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import signal
import sys
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping, Sequence

PROG = "whisper-mlx corpus"
FORMATS = {"parquet": ".parquet", "jsonl": ".json"}  # Ray Data's write_json names its files *.json
SUBTITLE_FORMATS = ("txt", "vtt", "srt", "tsv", "json")
AUDIO_EXTENSIONS = frozenset(
    ".wav .mp3 .flac .m4a .mp4 .ogg .oga .opus .webm .aac .wma .aif .aiff .amr .mkv .mov .avi .3gp .caf .au "
    ".mpga .mpeg".split()
)
INCOMPLETE = ".incomplete"  # where unreadable output files are moved, under DIR
# whisper-mlx's options that apply here (copied from its parser: same flags, defaults and help)
_SHARED = ("model", "device", "dtype", "backend", "task", "language", "temperature", "best_of", "beam_size",
           "patience", "length_penalty", "suppress_tokens", "temperature_increment_on_fallback",
           "compression_ratio_threshold", "logprob_threshold", "no_speech_threshold", "word_timestamps",
           "prepend_punctuations", "append_punctuations", "highlight_words", "max_line_width", "max_line_count",
           "max_words_per_line", "vad_filter", "pack")


class UsageError(ValueError):
    """Bad arguments or inputs: one line, exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _subtitle_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in formats if f not in SUBTITLE_FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"expected formats from {','.join(SUBTITLE_FORMATS)}, got {text!r}")
    return formats


def build_parser() -> argparse.ArgumentParser:
    from . import cli

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Transcribe many files on a Ray cluster (a local one unless --address): one row per file in "
                    "DIR, as Parquet or JSON lines; a rerun skips the inputs already there.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio/video files, directories (searched recursively for audio and video files) or globs "
                        "(quote them: 'calls/**/*.mp3')")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="directory for the rows (and subtitles)")
    p.add_argument("--format", choices=sorted(FORMATS), default=None,
                   help="row format (default: the one already in DIR, else parquet)%(default).0s")
    p.add_argument("--subtitles", type=_subtitle_formats, default=(), metavar="FMT[,FMT]",
                   help=f"also write these per input under DIR/subtitles/ ({','.join(SUBTITLE_FORMATS)})%(default).0s")
    p.add_argument("--workers", type=_positive_int, default=1, help="actors, each with its own model")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="30 s chunks each worker decodes together")
    p.add_argument("--files-per-task", type=_positive_int, default=None,
                   help="files handed to a worker at once (their chunks share batches; their rows are written "
                        "together); default: tasks by audio duration, each about two decoder batches of 30 s "
                        "chunks, at least four per worker%(default).0s")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster (`ray start --head` prints it; 'auto': the one on this machine); "
                        "default: start a local one for this run%(default).0s")
    p.add_argument("--cpus", type=_positive_int, default=None,
                   help="CPUs of the local cluster (default: this machine's); not with --address%(default).0s")
    p.add_argument("--cpus-per-worker", type=_positive_float, default=None,
                   help="CPUs each worker asks for (default: the local cluster's CPUs / --workers; 1 with --address)%(default).0s")
    p.add_argument("--max-files", type=_positive_int, default=None,
                   help="transcribe at most this many of the inputs not yet in DIR, then stop (rerun for the rest)%(default).0s")
    main = cli.build_parser()
    wanted = set(_SHARED) | {f"vad_{name}" for name in cli._VAD_OPTIONS}
    for action in main._actions:
        if action.dest in wanted:
            p._add_action(action)
    return p


# ---------------------------------------------------------------- inputs


def _is_audio(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def find_inputs(specs: Iterable[str]) -> list[str]:
    """Absolute paths of the files that the specs name, in order, each once. A directory gives its
    audio and video files (by extension, recursively, sorted); a glob its matching files. A spec
    that names nothing is a UsageError."""
    found: dict[str, None] = {}
    for spec in specs:
        if os.path.isdir(spec):
            files = sorted(os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
                           if _is_audio(name))
            if not files:
                raise UsageError(f"{spec}: no audio or video files in this directory")
        elif os.path.exists(spec) or os.path.islink(spec):
            files = [spec]
        elif glob.has_magic(spec):
            files = sorted(f for f in glob.glob(spec, recursive=True) if not os.path.isdir(f))
            if not files:
                raise UsageError(f"{spec}: no file matches")
        else:
            raise UsageError(f"{spec}: no such file or directory")
        for f in files:
            found.setdefault(os.path.abspath(f), None)
    return list(found)


def plan_tasks(paths: Sequence[str], durations: Mapping[str, float], batch_size: int, workers: int,
               files_per_task: int | None = None) -> list[list[str]]:
    """The inputs cut into tasks (each one actor call, its files' chunks sharing decoder batches),
    longest files first: the long files are spread over the workers from the start and the short
    ones fill in behind them, so no worker is left with a long file while the others are done
    (longest-processing-time-first scheduling).

    files_per_task: that many files a task. Otherwise tasks are cut by audio duration: about two
    full decoder batches of 30 s chunks each (a task of a few short files would decode at a
    fraction of the batch, and every task costs a round trip through Ray Data), but small enough
    that each worker gets at least four (the last tasks finish close together). A file longer
    than that is a task of its own; a file whose duration is unknown (0) counts as one chunk."""
    from .audio import CHUNK_LENGTH

    ordered = sorted(paths, key=lambda p: -durations.get(p, 0.0))
    if files_per_task is not None:
        return [ordered[i:i + files_per_task] for i in range(0, len(ordered), files_per_task)]
    seconds = {p: durations.get(p) or CHUNK_LENGTH for p in ordered}
    target = min(2 * batch_size * CHUNK_LENGTH, sum(seconds.values()) / (4 * workers))
    groups: list[list[str]] = []
    held = 0.0
    for p in ordered:
        if not groups or held >= target:
            groups.append([])
            held = 0.0
        groups[-1].append(p)
        held += seconds[p]
    return groups


def _duration(path: str) -> float:
    """The container's declared duration (0 when it cannot say): for the tasks' sizes and the
    progress bar, never for a result. A PCM WAV file's header is read directly (microseconds;
    opening the container with FFmpeg takes milliseconds, which thousands of files make seconds
    before the first task); other files, and WAV files the header reader refuses, through FFmpeg."""
    from .audio import _probe_duration

    if path.lower().endswith(".wav"):
        try:
            with wave.open(path) as f:
                return f.getnframes() / f.getframerate()
        except Exception:
            pass
    try:
        return _probe_duration(path) or 0.0
    except Exception:
        return 0.0


# ---------------------------------------------------------------- the output directory


class Output:
    """The rows in DIR: which inputs are done, and the new ones as Ray writes them."""

    def __init__(self, directory: Path, fmt: str | None, columns: Sequence[str] | None = None):
        self.dir, self.columns = directory, None if columns is None else list(columns)
        present = {name for name, ext in FORMATS.items() if any(directory.glob(f"*{ext}"))}
        if len(present) > 1:
            raise UsageError(f"{directory}: holds both Parquet and JSON rows; use one directory per format")
        if fmt is not None and present and fmt not in present:
            raise UsageError(f"{directory}: holds {present.pop()} rows, not {fmt}; omit --format to continue them")
        self.format = fmt or (present.pop() if present else "parquet")
        self.ext = FORMATS[self.format]
        self._read: dict[str, tuple[int, int]] = {}  # file -> (size when read, rows read)

    def files(self) -> list[Path]:
        return sorted(self.dir.glob(f"*{self.ext}"))

    def read(self, path: Path) -> list[dict]:
        """All rows of one output file; raises on a file that is incomplete."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=self.columns).to_pylist()
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text and not text.endswith("\n"):
            raise ValueError(f"{path}: last line incomplete")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def new_rows(self, final: bool = False) -> tuple[list[dict], list[Path]]:
        """Rows that appeared since the last call, and (final) the files that cannot be read."""
        rows, broken = [], []
        for path in self.files():
            key = str(path)
            size = path.stat().st_size
            seen = self._read.get(key)
            if seen and seen[0] == size:
                continue
            try:
                file_rows = self.read(path)
            except Exception:
                if final:
                    broken.append(path)
                continue  # still being written
            rows.extend(file_rows[seen[1] if seen else 0:])
            self._read[key] = (size, len(file_rows))
        return rows, broken

    def set_aside(self, paths: list[Path]) -> Path:
        """Move unreadable files (a run killed while writing them) out of the rows."""
        target = self.dir / INCOMPLETE
        target.mkdir(exist_ok=True)
        for path in paths:
            os.replace(path, target / path.name)
        return target


class Subtitles:
    """Subtitle files per input, under DIR/subtitles/, named by the input's path below the inputs'
    common directory (so equal basenames in different folders do not collide)."""

    def __init__(self, directory: Path, formats: Sequence[str], inputs: Sequence[str], options: dict):
        self.dir, self.formats, self.options = directory / "subtitles", tuple(formats), options
        self.inputs = set(inputs)
        self.root = os.path.commonpath([os.path.dirname(p) for p in inputs]) if inputs else "/"

    def write(self, row: dict) -> None:
        if not self.formats or row.get("error") is not None or row.get("path") not in self.inputs:
            return
        from .ray import to_result
        from .writers import render, write_atomic

        stem = os.path.splitext(os.path.relpath(row["path"], self.root))[0]
        result = None
        for fmt in self.formats:
            target = self.dir / f"{stem}.{fmt}"
            if target.exists():
                continue
            result = result or to_result(row)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(str(target), render(fmt, result, None, **self.options))


# ---------------------------------------------------------------- the run


def _transcribe_options(args: dict) -> dict:
    """transcribe_many keyword arguments from the parsed options (as `whisper-mlx --batch-size` does)."""
    import numpy as np

    from . import cli
    from .tokenizer import TO_LANGUAGE_CODE

    options = {name: args[name] for name in ("task", "language", "best_of", "beam_size", "patience", "length_penalty",
                                             "suppress_tokens", "compression_ratio_threshold", "logprob_threshold",
                                             "no_speech_threshold", "word_timestamps", "prepend_punctuations",
                                             "append_punctuations", "vad_filter", "pack")}
    if options["language"] is not None:
        options["language"] = TO_LANGUAGE_CODE.get(options["language"].lower(), options["language"])
    temperature, increment = args["temperature"], args["temperature_increment_on_fallback"]
    options["temperature"] = (tuple(float(t) for t in np.arange(temperature, 1.0 + 1e-6, increment))
                              if increment else (temperature,))
    options["vad_parameters"] = cli._vad_parameters(dict(args)) or None
    return options


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 all rows ok, 1 some inputs failed, 2 usage, 130 interrupted)."""
    from . import cli, vad

    parser = build_parser()
    args = vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    cli._check_args(parser, {**args, "clip_timestamps": "0", "output_name": None, "audio": []})
    if args["address"] is not None and args["cpus"] is not None:
        parser.error("--cpus sizes the local cluster; an existing one (--address) has its own")
    if args["vad_filter"] and not vad.onnxruntime_available():
        _say(f"error: --vad-filter needs onnxruntime, which is not installed: {vad.INSTALL_HINT}")
        return 2
    try:
        inputs = find_inputs(args["inputs"])
        out_dir = Path(args["output"])
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"{out_dir}: exists and is not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        # the rows' results are read back only to write subtitles from them
        output = Output(out_dir, args["format"], columns=None if args["subtitles"] else ("path", "duration", "error"))
    except (UsageError, OSError) as e:
        _say(f"error: {e}")
        return 2
    writer_options = {name: args[name] for name in cli._WORD_OPTIONS}
    subtitles = Subtitles(out_dir, args["subtitles"], inputs, writer_options)

    existing, broken = output.new_rows(final=True)
    if broken:
        where = output.set_aside(broken)
        _say(f"{len(broken)} unreadable output file(s) (a run stopped while writing them) moved to {where}; "
             "their inputs are transcribed again")
    done = {row["path"] for row in existing}
    for row in existing:
        subtitles.write(row)
    todo = [p for p in inputs if p not in done]
    skipped = len(inputs) - len(todo)
    if args["max_files"] is not None:
        todo = todo[: args["max_files"]]
    if skipped:
        _say(f"{skipped} of {len(inputs)} inputs already in {out_dir}: skipped")
    if not todo:
        _say(f"nothing to do: every input has its row in {out_dir}")
        return 0
    try:
        return _run(args, todo, output, subtitles, skipped)
    except KeyboardInterrupt:
        _say(f"interrupted; rows written so far stay in {out_dir} and a rerun continues from them")
        return 130


def _run(args: dict, todo: list[str], output: Output, subtitles: Subtitles, skipped: int) -> int:
    local = args["address"] is None
    if local and "ray" not in sys.modules:
        # a single-machine node, as Ray runs on macOS and Windows: its address is the loopback one
        # and its servers listen there only (on Linux Ray would otherwise take the address that
        # routes outside and listen on every interface); read when Ray is imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError as e:
        _say(f"error: needs the `ray` extra ({e.name} is missing): pip install 'whisper-mlx[ray]'")
        return 2
    import mlx.core as mx

    from .load import ModelLoadError, read_config, resolve
    from .ray import ray_remote_args

    model = args["model"]
    try:
        if args["address"] is None:
            model = str(resolve(model).resolve())  # fetched once here, not by every worker
        elif Path(model).expanduser().is_dir():
            model = str(Path(model).expanduser().resolve())
        if Path(model).is_dir():
            read_config(Path(model))  # a broken directory: one line here, not a failure in every worker
    except ModelLoadError as e:
        _say(f"error: {e}")
        return 1
    device = args["device"] or ("gpu" if mx.is_available(mx.gpu) else "cpu")
    gpu = device == "gpu" and sys.platform != "darwin"  # Metal is no GPU to Ray: see ray_remote_args

    cpus = args["cpus"] or os.cpu_count() or 1
    # the inputs' durations (for the tasks and the progress bar) are read while Ray starts, on a few
    # threads: opening a container costs milliseconds, thousands of inputs seconds
    probe = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1), thread_name_prefix="whisper-mlx-probe")
    pending = [probe.submit(_duration, p) for p in todo]
    # two notices that are not about this run: Ray's advice to opt out of token authentication (kept
    # on), and Ray Data's note that its own progress bars are off (this command draws its own)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    try:
        if local:
            ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=_object_store_bytes(),
                     log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=args["address"], log_to_driver=False, logging_level=logging.WARNING)
        # after ray.init, which installs a handler that aborts the process: SIGTERM ends the run as
        # Ctrl-C does (Ray Data stops its executor, the local cluster is shut down, exit 130)
        signal.signal(signal.SIGTERM, _interrupt)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus_per_worker = args["cpus_per_worker"] or (cpus / args["workers"] if local else 1)
        need = ray_remote_args(gpu, cpus_per_worker)
        have = ray.cluster_resources()
        for resource, flag in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            wanted = need.get(resource, 0) * args["workers"]
            if wanted > have.get(flag, 0) + 1e-9:  # an actor pool that cannot start would wait forever
                _say(f"error: {args['workers']} worker(s) need {wanted:g} {flag}s in all; the cluster has "
                     f"{have.get(flag, 0):g} (--workers, --cpus-per-worker, --device)")
                return 2
        constructor = dict(model=model, backend=args["backend"], device=device, dtype=args["dtype"],
                           batch_size=args["batch_size"], **_transcribe_options(args))
        durations = {p: future.result() for p, future in zip(todo, pending)}
        groups = plan_tasks(todo, durations, args["batch_size"], args["workers"], args["files_per_task"])
        ds = task_dataset(groups, constructor, args["workers"], need)
        return _write(ds, durations, output, subtitles, skipped)
    finally:
        probe.shutdown(cancel_futures=True)
        ray.shutdown()


def task_dataset(groups: list[list[str]], constructor: dict, workers: int, need: dict):
    """The Ray Data pipeline of a run: one row per task (its paths), each handed whole to one call
    of an actor pool of `workers` `TaskTranscriber`s asking for `need` (`ray_remote_args`); one
    row per file comes out. batch_size=1 keeps a task whole on GPU actors too, which Ray Data
    refuses without a batch size. A task goes to an actor only when it is free (one task in
    flight each, not Ray Data's default two): a task's row is a few paths, so nothing is gained
    by queueing it early, and a task queued behind another on a busy actor would finish last
    while the other actors stand idle at the end of the run."""
    import ray.data

    from .ray import TaskTranscriber

    return ray.data.from_items([{"paths": group} for group in groups], override_num_blocks=len(groups)).map_batches(
        TaskTranscriber, fn_constructor_kwargs=constructor, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1), **need)


def _write(ds, durations: dict[str, float], output: Output, subtitles: Subtitles, skipped: int) -> int:
    """Run the dataset into Ray's writer (in this thread, so that Ctrl-C or SIGTERM stops Ray
    Data's executor cleanly) while a watcher thread shows progress and writes subtitles from the
    rows as their files appear."""
    watcher = _Watcher(durations, output, subtitles)
    watcher.start()
    try:
        # writing is I/O: it asks for no CPU, so it never waits behind the workers holding them
        if output.format == "parquet":
            ds.write_parquet(str(output.dir), ray_remote_args={"num_cpus": 0})
        else:
            ds.write_json(str(output.dir), ray_remote_args={"num_cpus": 0}, force_ascii=False, double_precision=15)
    except Exception as e:
        watcher.finish()
        from .ray import error_line

        _say(f"error: {error_line('ray', e)}")
        return 1
    except BaseException:
        watcher.finish(final=False)
        raise
    broken = watcher.finish()
    if broken:
        _say(f"error: {len(broken)} output file(s) cannot be read: {', '.join(map(str, broken))}")
        return 1
    _say(f"{watcher.transcribed} transcribed ({watcher.seconds / 3600:.3f} h of audio), {watcher.failed} failed, "
         f"{skipped} skipped; rows in {output.dir}")
    return 1 if watcher.failed else 0


class _Watcher(threading.Thread):
    """Polls DIR for this run's rows: progress bars (files, hours of audio), error lines, subtitles."""

    def __init__(self, durations: dict[str, float], output: Output, subtitles: Subtitles):
        super().__init__(name="whisper-mlx-corpus-progress", daemon=True)
        import tqdm

        self.output, self.subtitles, self.wanted = output, subtitles, set(durations)
        self.transcribed = self.failed = 0
        self.seconds = 0.0
        self.broken: list[Path] = []
        self._halt = threading.Event()
        hours_total = sum(durations.values()) / 3600
        self.files = tqdm.tqdm(total=len(durations), unit="file", desc="files", disable=None, position=0)
        self.hours = tqdm.tqdm(total=round(hours_total, 3), desc="audio", disable=None, position=1,
                               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h [{elapsed}<{remaining}]")

    def run(self) -> None:
        while not self._halt.wait(0.5):
            self._scan(final=False)

    def finish(self, final: bool = True) -> list[Path]:
        """Stop polling; read what is left (final: every file must be readable now); close the bars."""
        self._halt.set()
        self.join()
        try:
            if final:
                self._scan(final=True)
        finally:
            self.files.close()
            self.hours.close()
        return self.broken

    def _scan(self, final: bool) -> None:
        import tqdm

        rows, self.broken = self.output.new_rows(final=final)
        for row in rows:
            if row.get("path") not in self.wanted:
                continue
            self.subtitles.write(row)
            duration = row.get("duration") or 0.0
            self.seconds += duration
            if row.get("error") is not None:
                self.failed += 1
                tqdm.tqdm.write(f"{PROG}: error: {row['error']}", file=sys.stderr)
            else:
                self.transcribed += 1
            self.files.update(1)
            self.hours.update(round(duration / 3600, 6))


def _object_store_bytes() -> int:
    """The local cluster's object store: rows of paths and text, never audio; a small one does."""
    return 512 * 1024 * 1024


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
