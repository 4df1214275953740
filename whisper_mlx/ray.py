"""Transcription on Ray Data (`pip install "whisper-mlx[ray]"`): `Transcriber`, a callable class
for `ray.data.Dataset.map_batches` over an actor pool.

    import ray.data
    from whisper_mlx.ray import Transcriber, ray_remote_args

    ds = ray.data.read_binary_files("s3://bucket/calls/", include_paths=True)   # or from_items([{"path": ...}])
    ds = ds.map_batches(Transcriber, fn_constructor_kwargs=dict(model="tiny.en", batch_size=8, temperature=0.0),
                        batch_size=16, concurrency=2, **ray_remote_args(gpu=False))
    ds.write_parquet("out/")

Each actor loads the model once (any backend: `backend=`, `device=`, `dtype=` as `load_model`
takes them) and transcribes every batch of rows it gets with the batched decoder
(`whisper_mlx.batched.transcribe_many`, chunks of the batch's files sharing decoder batches).
A row is audio bytes (column `bytes`, as `read_binary_files` makes it) or a path readable on the
actor's node (column `path`). A row that cannot be read or decoded gets a one-line `error` and
null results; the batch and the job go on.

Output columns, the same for every batch (`SCHEMA`); the input's other columns pass through,
the audio bytes do not:
- `text`, `language`: as `transcribe` returns them; `duration`: seconds of audio decoded.
- `segments`: a list of structs, transcribe's segment fields (id, seek, start, end, text, tokens,
  temperature, avg_logprob, compression_ratio, no_speech_prob) without `words`.
- `words`: with word_timestamps, one flat list of structs (segment, word, start, end,
  probability) where `segment` is the id of the segment the word belongs to; null without.
- `error`: null, or `<input>: <problem>` for a row that failed.

Nested values are Arrow structs rather than JSON strings: Parquet stores them as typed, queryable
columns (DuckDB, pandas, Polars read `segments` directly), floats stay exact, and JSON writers
emit them as nested objects. `to_result(row)` turns a row back into transcribe's dict (segments
with their `words`), which is what the subtitle writers take.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa

from .audio import SAMPLE_RATE, AudioError, load_audio

WORD = pa.struct([
    ("segment", pa.int64()), ("word", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
    ("probability", pa.float64()),
])
SEGMENT = pa.struct([
    ("id", pa.int64()), ("seek", pa.int64()), ("start", pa.float64()), ("end", pa.float64()), ("text", pa.string()),
    ("tokens", pa.list_(pa.int64())), ("temperature", pa.float64()), ("avg_logprob", pa.float64()),
    ("compression_ratio", pa.float64()), ("no_speech_prob", pa.float64()),
])
# the columns every batch adds (the passed-through input columns come first)
SCHEMA = pa.schema([
    ("text", pa.string()), ("language", pa.string()), ("duration", pa.float64()),
    ("segments", pa.list_(SEGMENT)), ("words", pa.list_(WORD)), ("error", pa.string()),
])
_SEGMENT_FIELDS = [f.name for f in SEGMENT]
_WORD_FIELDS = [f.name for f in WORD if f.name != "segment"]


def ray_remote_args(gpu: bool, cpus: float = 1) -> dict:
    """Resources each actor asks for: one GPU (and one CPU) when the model runs on a CUDA GPU,
    else `cpus` cores (whisper_mlx's CPU threads follow OMP_NUM_THREADS, which Ray sets to the
    actor's CPU count). Ray counts no GPUs on Apple silicon, where MLX computes on Metal whatever
    the actor asks for: ask for CPUs there (gpu=False) and the actors still use the GPU."""
    return {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": cpus}


def error_line(name: str, e: BaseException) -> str:
    """One line naming the input and the problem (as the CLI prints it)."""
    problem = str(e) if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
    if not problem.startswith(f"{name}: "):
        problem = f"{name}: {problem}"
    return " ".join(problem.split())


class Transcriber:
    """A callable class for `Dataset.map_batches`: one model per actor, the batched decoder per batch.

    model: a model directory, Hub repo id or zoo short name (loaded once, in the actor).
    backend, device, dtype: as `load_model` and `whisper-mlx --device` take them (None: the
    machine's defaults).
    batch_size: 30 s chunks decoded together (across the rows of a batch).
    bytes_column / path_column: where a row's audio is; bytes win when a row has both (the path
    then only names the row in errors).
    options: `transcribe_many` keyword arguments (temperature, word_timestamps, vad_filter,
    vad_parameters, language, task, beam_size, best_of, ...), checked when the actor starts.
    """

    def __init__(self, model: str, *, backend: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 8, bytes_column: str = "bytes",
                 path_column: str = "path", **options: Any):
        import inspect

        from . import runtime
        from .batched import BatchOptions, transcribe_many
        from .decoding import DecodingOptions
        from .load import load_model

        # bad options fail the actor when it starts, not every row
        BatchOptions(batch_size=batch_size)
        known = set(inspect.signature(transcribe_many).parameters) | set(DecodingOptions.__dataclass_fields__)
        unknown = sorted(set(options) - known - {"inputs", "model", "batch_size"})
        if unknown:
            raise TypeError(f"Transcriber: unknown option(s) {', '.join(unknown)} (transcribe_many's keyword "
                            "arguments and DecodingOptions' fields are accepted)")
        DecodingOptions(**{k: v for k, v in options.items() if k in DecodingOptions.__dataclass_fields__})
        runtime.set_device(device)
        self.model = load_model(model, dtype=dtype, backend=backend)
        self.batch_size = batch_size
        self.bytes_column, self.path_column = bytes_column, path_column
        self.options = dict(options)
        self.word_timestamps = bool(options.get("word_timestamps"))

    def __call__(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        """Transcribe one batch of rows; returns the input columns (less the bytes) and SCHEMA's."""
        from .batched import transcribe_many

        if self.bytes_column not in batch and self.path_column not in batch:
            raise ValueError(f"rows need a {self.bytes_column!r} (audio bytes) or {self.path_column!r} column; "
                             f"got {sorted(batch)}")
        clash = sorted(set(batch) & set(SCHEMA.names))
        if clash:
            raise ValueError(f"input column(s) {clash} would be overwritten by the transcription's")
        n = len(next(iter(batch.values())))
        names = [self._name(batch, i) for i in range(n)]
        results: list[dict | None] = [None] * n
        errors: list[str | None] = [None] * n
        durations: list[float | None] = [None] * n
        order: list[int] = []  # transcribe_many's input index -> row

        def audio() -> Iterator[np.ndarray]:
            for i in range(n):  # read one at a time, as the decoder's queue asks for the next
                try:
                    samples = self._audio(batch, i, names[i])
                except Exception as e:  # one bad row must not stop the others
                    errors[i] = error_line(names[i], e)
                    continue
                durations[i] = samples.size / SAMPLE_RATE
                order.append(i)
                yield samples

        try:
            for k, _, result in transcribe_many(audio(), model=self.model, batch_size=self.batch_size, **self.options):
                i = order[k]
                if isinstance(result, Exception):
                    errors[i] = error_line(names[i], result)
                else:
                    results[i] = result
        except Exception as e:  # the decoder failed mid-batch: its unfinished rows say so, the job goes on
            for i in range(n):
                if results[i] is None and errors[i] is None:
                    errors[i] = error_line(names[i], e)
        for i in range(n):  # rows never reached (an exception while reading the batch)
            if results[i] is None and errors[i] is None:
                errors[i] = f"{names[i]}: not transcribed"
        return self._table(batch, results, durations, errors)

    def _name(self, batch: Mapping[str, np.ndarray], i: int) -> str:
        if self.path_column in batch and batch[self.path_column][i] is not None:
            return str(batch[self.path_column][i])
        return f"row {i}"

    def _audio(self, batch: Mapping[str, np.ndarray], i: int, name: str) -> np.ndarray:
        """The row's 16 kHz waveform, decoded as `load_audio` decodes a file."""
        data = batch[self.bytes_column][i] if self.bytes_column in batch else None
        if data is None:
            return load_audio(name)
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(name)[1][:16], prefix="whisper-mlx-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(bytes(data))
            return load_audio(tmp)
        except AudioError as e:
            raise AudioError(str(e).replace(tmp, name)) from None
        finally:
            os.unlink(tmp)

    def _table(self, batch: Mapping[str, np.ndarray], results: list[dict | None], durations: list[float | None],
               errors: list[str | None]) -> pa.Table:
        columns = {name: pa.array(list(values)) for name, values in batch.items() if name != self.bytes_column}
        rows = [from_result(r, self.word_timestamps) if r is not None else {} for r in results]
        for field in SCHEMA:
            if field.name == "duration":
                values = durations
            elif field.name == "error":
                values = errors
            else:
                values = [row.get(field.name) for row in rows]
            columns[field.name] = pa.array(values, type=field.type)
        return pa.table(columns)


class TaskTranscriber(Transcriber):
    """`Transcriber` over tasks: a row is one task, a list of paths (column `paths`), and each of
    them comes out as its own row (column `path`). With `batch_size=1`, Ray Data hands every task
    whole to one actor call, on CPU and GPU actors alike (GPU actors require a batch size, so a
    task cannot be a block taken whole with `batch_size=None`); `whisper-mlx corpus` plans the
    tasks by audio duration."""

    def __call__(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for task in batch["paths"] for p in task]
        return super().__call__({self.path_column: np.array(paths, dtype=object)})


def from_result(result: dict, word_timestamps: bool) -> dict:
    """A `transcribe` result as SCHEMA's text, language, segments and words values."""
    segments, words = [], []
    for segment in result["segments"]:
        segments.append({name: segment[name] for name in _SEGMENT_FIELDS})
        for word in segment.get("words") or ():
            words.append({"segment": segment["id"], **{name: word[name] for name in _WORD_FIELDS}})
    return {"text": result["text"], "language": result["language"], "segments": segments,
            "words": words if word_timestamps else None}


def to_result(row: Mapping[str, Any]) -> dict:
    """A row (as Parquet, JSON or `Dataset.iter_rows` give it) as `transcribe`'s result dict:
    text, segments (each with its `words` where the row has words), language."""
    words = row.get("words")
    by_segment: dict[int, list[dict]] = {}
    for word in [] if words is None else words:
        by_segment.setdefault(int(word["segment"]), []).append({name: word[name] for name in _WORD_FIELDS})
    segments = []
    for segment in row["segments"]:
        segment = {name: segment[name] for name in _SEGMENT_FIELDS}
        segment["tokens"] = [int(t) for t in segment["tokens"]]
        if words is not None:
            segment["words"] = by_segment.get(int(segment["id"]), [])
        segments.append(segment)
    return {"text": row["text"], "segments": segments, "language": row["language"]}
