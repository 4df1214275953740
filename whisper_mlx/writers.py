"""Output writers (txt, vtt, srt, tsv, json), byte-for-byte as openai-whisper's, written atomically.

Each file is rendered in memory, written to a temporary file beside its target and renamed into
place, so an interrupted run never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, TextIO
from urllib.parse import unquote, urlsplit

OUTPUT_FORMATS = ("txt", "vtt", "srt", "tsv", "json")


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """[HH:]MM:SS.mmm, rounded to the millisecond, as openai-whisper prints times."""
    assert seconds >= 0, "non-negative timestamp expected"
    milliseconds = round(seconds * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    seconds, milliseconds = divmod(milliseconds, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{seconds:02d}{decimal_marker}{milliseconds:03d}"


def get_start(segments: list[dict]) -> Optional[float]:
    """Start of the first word, else of the first segment."""
    return next((w["start"] for s in segments for w in s["words"]), segments[0]["start"] if segments else None)


def get_end(segments: list[dict]) -> Optional[float]:
    """End of the last word, else of the last segment."""
    return next(
        (w["end"] for s in reversed(segments) for w in reversed(s["words"])),
        segments[-1]["end"] if segments else None,
    )


# ---------------------------------------------------------------- formats


def write_txt(result: dict, file: TextIO, options: Optional[dict] = None, **kwargs) -> None:
    """One line per segment."""
    for segment in result["segments"]:
        print(segment["text"].strip(), file=file)


def write_vtt(result: dict, file: TextIO, options: Optional[dict] = None, **kwargs) -> None:
    """WebVTT subtitles."""
    print("WEBVTT\n", file=file)
    for start, end, text in iterate_subtitles(result, options, _VTT, **kwargs):
        print(f"{start} --> {end}\n{text}\n", file=file)


def write_srt(result: dict, file: TextIO, options: Optional[dict] = None, **kwargs) -> None:
    """SubRip subtitles."""
    for i, (start, end, text) in enumerate(iterate_subtitles(result, options, _SRT, **kwargs), start=1):
        print(f"{i}\n{start} --> {end}\n{text}\n", file=file)


def write_tsv(result: dict, file: TextIO, options: Optional[dict] = None, **kwargs) -> None:
    """start<TAB>end<TAB>text, times in integer milliseconds (locale-proof)."""
    print("start", "end", "text", sep="\t", file=file)
    for segment in result["segments"]:
        print(round(1000 * segment["start"]), file=file, end="\t")
        print(round(1000 * segment["end"]), file=file, end="\t")
        print(segment["text"].strip().replace("\t", " "), file=file)


def write_json(result: dict, file: TextIO, options: Optional[dict] = None, **kwargs) -> None:
    """The whole result dict."""
    json.dump(result, file)


WRITERS: dict[str, Callable[..., None]] = {
    "txt": write_txt,
    "vtt": write_vtt,
    "srt": write_srt,
    "tsv": write_tsv,
    "json": write_json,
}


# ---------------------------------------------------------------- subtitles


@dataclass(frozen=True)
class _TimeStyle:
    always_include_hours: bool
    decimal_marker: str

    def __call__(self, seconds: float) -> str:
        return format_timestamp(seconds, self.always_include_hours, self.decimal_marker)


_VTT = _TimeStyle(always_include_hours=False, decimal_marker=".")
_SRT = _TimeStyle(always_include_hours=True, decimal_marker=",")


def iterate_subtitles(
    result: dict,
    options: Optional[dict],
    timestamp: Callable[[float], str],
    *,
    max_line_width: Optional[int] = None,
    max_line_count: Optional[int] = None,
    highlight_words: bool = False,
    max_words_per_line: Optional[int] = None,
) -> Iterator[tuple[str, str, str]]:
    """(start, end, text) cues: segments as they are, or words regrouped into lines and cues."""
    options = options or {}
    max_line_width = max_line_width or options.get("max_line_width")
    max_line_count = max_line_count or options.get("max_line_count")
    highlight_words = highlight_words or options.get("highlight_words", False)
    max_words_per_line = max_words_per_line or options.get("max_words_per_line")
    segments = result["segments"]

    if not (segments and "words" in segments[0]):
        for segment in segments:
            text = segment["text"].strip().replace("-->", "->")
            yield timestamp(segment["start"]), timestamp(segment["end"]), text
        return

    for subtitle in _group_words(segments, max_line_width, max_line_count, max_words_per_line):
        start, end = timestamp(subtitle[0]["start"]), timestamp(subtitle[-1]["end"])
        text = "".join(word["word"] for word in subtitle)
        if not highlight_words:
            yield start, end, text
            continue
        last = start
        words = [timing["word"] for timing in subtitle]
        for i, this_word in enumerate(subtitle):
            word_start, word_end = timestamp(this_word["start"]), timestamp(this_word["end"])
            if last != word_start:
                yield last, word_start, text
            yield word_start, word_end, "".join(
                re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", word) if j == i else word for j, word in enumerate(words)
            )
            last = word_end


def _group_words(
    segments: list[dict],
    max_line_width: Optional[int],
    max_line_count: Optional[int],
    max_words_per_line: Optional[int],
) -> Iterator[list[dict]]:
    """Word timings grouped into cues; a word starting a new line carries a leading newline."""
    preserve_segments = max_line_count is None or max_line_width is None
    max_line_width = max_line_width or 1000
    max_words_per_line = max_words_per_line or 1000
    line_len = 0
    line_count = 1
    subtitle: list[dict] = []
    last: float = get_start(segments) or 0.0
    for segment in segments:
        chunk_index = 0
        words_count = max_words_per_line
        while chunk_index < len(segment["words"]):
            remaining_words = len(segment["words"]) - chunk_index
            if max_words_per_line > remaining_words:
                words_count = remaining_words
            for i, original_timing in enumerate(segment["words"][chunk_index : chunk_index + words_count]):
                timing = original_timing.copy()
                long_pause = not preserve_segments and timing["start"] - last > 3.0
                has_room = line_len + len(timing["word"]) <= max_line_width
                seg_break = i == 0 and len(subtitle) > 0 and preserve_segments
                if line_len > 0 and has_room and not long_pause and not seg_break:
                    line_len += len(timing["word"])  # line continuation
                else:
                    timing["word"] = timing["word"].strip()
                    if (
                        len(subtitle) > 0
                        and max_line_count is not None
                        and (long_pause or line_count >= max_line_count)
                        or seg_break
                    ):
                        yield subtitle  # subtitle break
                        subtitle = []
                        line_count = 1
                    elif line_len > 0:
                        line_count += 1  # line break
                        timing["word"] = "\n" + timing["word"]
                    line_len = len(timing["word"].strip())
                subtitle.append(timing)
                last = timing["start"]
            chunk_index += max_words_per_line
    if subtitle:
        yield subtitle


# ---------------------------------------------------------------- files


def output_path(output_dir: str, audio_path: str, extension: str) -> str:
    """<output_dir>/<audio basename without extension>.<extension>, as openai-whisper names outputs
    (see `output_stem` for stdin and URLs)."""
    return os.path.join(output_dir, f"{output_stem(audio_path)}.{extension}")


def output_stem(audio_path: str) -> str:
    """The outputs' base name for an audio argument: the file's name without its extension;
    `stdin` for `-` (standard input); for a URL, the last part of its path (else its host)."""
    if audio_path == "-":
        return "stdin"
    if "://" in audio_path:
        url = urlsplit(audio_path)
        audio_path = unquote(url.path.rstrip("/")) or url.hostname or "url"
    return os.path.splitext(os.path.basename(audio_path))[0]


def write_atomic(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename.

    The file gets the permissions a plain `open(path, "w")` would give: an existing file keeps its
    mode, a new one gets 0666 less the umask. A symlink stays a symlink: the file it points to
    is replaced (its temporary file sits beside that file, so the rename stays atomic).
    """
    path = os.path.realpath(path) if os.path.islink(path) else path
    directory = os.path.dirname(path) or "."
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    fd, tmp = _create_beside(directory, os.path.basename(path))
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _create_beside(directory: str, name: str) -> tuple[int, str]:
    """A new, uniquely named temporary file in `directory`, created with mode 0666 so the kernel
    applies the umask (tempfile.mkstemp creates 0600 files)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: no free temporary file name for {name}")


def render(output_format: str, result: dict, options: Optional[dict] = None, **kwargs) -> str:
    """The text one format writes for `result`."""
    buffer = io.StringIO()
    WRITERS[output_format](result, buffer, options, **kwargs)
    return buffer.getvalue()


def get_writer(output_format: str, output_dir: str) -> Callable[..., list[str]]:
    """A function `(result, audio_path, options=None, *, output_name=None, **kwargs)` writing the
    format(s); returns paths.

    `output_format` is one of txt, vtt, srt, tsv, json or "all"; kwargs are the subtitle options
    (highlight_words, max_line_width, max_line_count, max_words_per_line); `output_name` replaces
    the base name taken from `audio_path`.
    """
    if output_format != "all" and output_format not in WRITERS:
        raise ValueError(f"unknown output format {output_format!r}; choose from {', '.join(OUTPUT_FORMATS)}, all")
    formats = OUTPUT_FORMATS if output_format == "all" else (output_format,)

    def write(result: dict, audio_path: str, options: Optional[dict] = None, *, output_name: Optional[str] = None,
              **kwargs) -> list[str]:
        stem = output_stem(audio_path) if output_name is None else output_name
        rendered = [(os.path.join(output_dir, f"{stem}.{fmt}"), render(fmt, result, options, **kwargs)) for fmt in formats]
        for path, text in rendered:
            write_atomic(path, text)
        return [path for path, _ in rendered]

    return write
