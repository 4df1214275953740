"""Batched transcription (whisper_mlx.batched): chunks of one or many inputs decoded as B rows.

On clips of at most 30 s a batch is the sequential decoder's window, so text and word times must
be the sequential run's; many files with bad ones among them each get their own outcome; with the
VAD the chunks follow the speech and times map back to the original audio."""

from __future__ import annotations

import json

import numpy as np
import pytest

import whisper_mlx
from test_bad_input import run_cli, wer
from test_vad import PAD_S, gap_clip  # noqa: F401  (the fixture)
from whisper_mlx import batched
from whisper_mlx.batched import transcribe_many


@pytest.fixture(scope="module")
def tiny(tiny_en_fp32_dir):
    return whisper_mlx.load_model(tiny_en_fp32_dir)


@pytest.fixture(scope="module")
def short_clips(clips):
    """The parity clips of at most 30 s (one window)."""
    from whisper_mlx.audio import load_audio

    short = [c for c in clips.values() if c.split == "parity" and load_audio(c.path).size <= 30 * 16000]
    assert len(short) >= 6
    return sorted(short, key=lambda c: c.id)


def _words(result: dict) -> list[tuple]:
    return [(w["word"], w["start"], w["end"]) for s in result["segments"] for w in s["words"]]


@pytest.mark.parametrize("options", [dict(temperature=0.0, word_timestamps=True), dict(temperature=0.0, beam_size=5)],
                         ids=["greedy-words", "beam5"])
def test_batched_equals_sequential_on_short_clips(tiny, short_clips, options):
    paths = [str(c.path) for c in short_clips]
    batched = {i: r for i, _, r in transcribe_many(paths, model=tiny, batch_size=8, vad_filter=False,
                                                    without_timestamps=False, **options)}
    assert sorted(batched) == list(range(len(paths)))
    for i, path in enumerate(paths):
        sequential = whisper_mlx.transcribe(path, model=tiny, **options)
        assert batched[i]["text"] == sequential["text"], path
        assert [s["text"] for s in batched[i]["segments"]] == [s["text"] for s in sequential["segments"]]
        assert [(s["start"], s["end"]) for s in batched[i]["segments"]] == \
            [(s["start"], s["end"]) for s in sequential["segments"]]
        if options.get("word_timestamps"):
            assert _words(batched[i]) == _words(sequential), path


def test_many_files_with_bad_ones_through_the_command(tiny_en_fp32_dir, short_clips, tmp_path, tiny):
    good = [c.path for c in short_clips[:3]]
    text_file = tmp_path / "notes.wav"
    text_file.write_text("this is not audio\n")
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    inputs = [good[0], text_file, good[1], empty, good[2]]
    out = tmp_path / "out"
    proc = run_cli(*map(str, inputs), "--model", str(tiny_en_fp32_dir), "--batch-size", "4", "--vad-filter", "False",
                    "--output-format", "json", "--output-dir", str(out), "--beam-size", "None", "--temperature", "0")
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2, proc.stderr
    assert str(text_file) in errors[0] and str(empty) in errors[1]
    for path in good:
        written = json.loads((out / f"{path.stem}.json").read_text())
        assert written["text"] == whisper_mlx.transcribe(str(path), model=tiny, temperature=0.0,
                                                         without_timestamps=True)["text"]
    assert not (out / "notes.json").exists() and not (out / "empty.json").exists()


def test_batched_vad_chunks_keep_words_out_of_silences(tiny, gap_clip):  # noqa: F811
    result = whisper_mlx.transcribe(str(gap_clip.path), model=tiny, temperature=0.0, word_timestamps=True,
                                    batch_size=8, vad_filter=True)
    assert wer(gap_clip.text, result["text"]) <= 0.2, result["text"]
    words = [w for s in result["segments"] for w in s["words"]]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    for gap_start, gap_end in gap_clip.gaps:
        inside = [w for w in words if w["end"] > gap_start + PAD_S and w["start"] < gap_end - PAD_S]
        assert not inside, (gap_start, gap_end, inside)
    assert words[-1]["end"] <= gap_clip.audio.size / 16000


def test_batch_size_must_be_positive(tiny, short_clips):
    with pytest.raises(ValueError, match="batch_size"):
        list(transcribe_many([str(short_clips[0].path)], model=tiny, batch_size=0))


# ---------------------------------------------------------------- files streamed, not held whole


@pytest.mark.parametrize("vad_filter", [True, False], ids=["vad", "windows"])
def test_streamed_files_equal_the_whole_array(tiny, clips, gap_clip, vad_filter, monkeypatch):  # noqa: F811
    """A long file (here: every file, KEEP_SECONDS = 0) is read in two streaming passes (probabilities and length, then each chunk's audio
    when its batch comes); its chunks, their samples and the result are exactly those of its
    samples given as an array (read whole, the path it always had). With the VAD: the gap clip,
    whose chunks join several regions with silences skipped between them; without: the long
    story's two 30 s windows."""
    from whisper_mlx.audio import load_audio
    from whisper_mlx.batched import BatchedTranscriber, BatchOptions
    from whisper_mlx.vad import VadOptions

    monkeypatch.setattr(batched, "KEEP_SECONDS", 0.0)
    clip = gap_clip if vad_filter else clips["en_long_story"]
    path = str(clip.path)
    array = load_audio(path)
    batched_vad = VadOptions(max_speech_duration_s=30.0, min_silence_duration_ms=160)  # transcribe_many's default
    reader = BatchedTranscriber(tiny, BatchOptions(vad_filter=vad_filter, vad_options=batched_vad), {})
    streamed, whole = reader._open(0, path), reader._open(0, array)
    assert streamed.speech is None and streamed.duration == whole.duration
    assert streamed.chunks == whole.chunks and len(streamed.chunks) >= 2
    if vad_filter:  # regions with silences skipped between them
        assert max(len(c.regions) for c in streamed.chunks) >= 3
    for i, chunk in enumerate(streamed.chunks):
        assert np.array_equal(streamed.chunk_audio(i), chunk.audio(array)), i
    streamed.release()
    # the same batch (rows in the same places) from the file and from the array
    options = dict(model=tiny, batch_size=8, vad_filter=vad_filter, temperature=0.0, word_timestamps=vad_filter)
    [(_, _, from_file)] = transcribe_many([path], **options)
    [(_, _, from_array)] = transcribe_many([array], **options)
    assert isinstance(from_file, dict), from_file
    assert from_file == from_array
    assert len(from_file["segments"]) >= 2
    assert wer(clip.text, from_file["text"]) <= 0.2


def test_language_is_detected_on_the_first_chunk_and_its_encoding_reused(base_fp32_dir, clips, monkeypatch):
    """Without a language, a multilingual model detects it on the input's first chunk: without
    the VAD the first 30 s, exactly the same samples for a file read as a stream as for the array
    (the long story is longer than 30 s); the right language on real weights. That chunk's encoder
    output is not computed again for its window: the long story with the VAD encodes one window per
    chunk (not one more), and its text equals that of a run told the language."""
    from whisper_mlx.audio import N_SAMPLES, load_audio
    from whisper_mlx.batched import BatchedTranscriber, BatchOptions

    base = whisper_mlx.load_model(base_fp32_dir)
    reader = BatchedTranscriber(base, BatchOptions(vad_filter=False), {})
    spanish = clips["es_beach"].path
    assert reader._open(0, spanish).language == reader._open(0, load_audio(spanish)).language == "es"
    seen = []
    original = BatchedTranscriber._detection_audio
    monkeypatch.setattr(BatchedTranscriber, "_detection_audio", staticmethod(lambda read: seen.append(original(read)) or seen[-1]))
    monkeypatch.setattr(batched, "KEEP_SECONDS", 0.0)  # the file is read as a stream, not kept
    story = clips["en_long_story"].path
    reader._open(0, story), reader._open(0, load_audio(story))
    (from_file, first_chunk), (from_array, _) = seen
    assert first_chunk and from_file.size == N_SAMPLES and np.array_equal(from_file, from_array)
    monkeypatch.undo()

    encoded = []
    embed = batched.embed_audio
    monkeypatch.setattr(batched, "embed_audio", lambda model, mel: encoded.append(mel.shape[0]) or embed(model, mel))
    options = dict(model=base, batch_size=8, vad_filter=True, temperature=0.0)
    [(_, _, detected)] = transcribe_many([story], **options)
    chunks = len({segment["seek"] for segment in detected["segments"]})
    assert detected["language"] == "en" and chunks >= 2
    assert sum(encoded) == chunks, encoded
    [(_, _, told)] = transcribe_many([story], language="en", **options)
    assert detected["text"] == told["text"]


def test_a_file_cut_short_after_its_first_reading_fails_alone(tiny, short_clips, tmp_path, monkeypatch):
    """An error that shows only on the second reading of a long file (here: every file,
    KEEP_SECONDS = 0; the file was cut short after its length and chunks were found) is that
    input's error, one line naming it; the others go on."""
    import shutil

    monkeypatch.setattr(batched, "KEEP_SECONDS", 0.0)

    from whisper_mlx.audio import AudioError

    good = [str(c.path) for c in short_clips[:2]]
    victim = tmp_path / "victim.wav"
    shutil.copy(short_clips[2].path, victim)

    def inputs():
        yield good[0]
        yield str(victim)
        # the queue asks for the next input once the victim was opened (its first reading): cut it now
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        yield good[1]

    options = dict(model=tiny, batch_size=8, vad_filter=False, temperature=0.0)
    results = {i: r for i, _, r in transcribe_many(inputs(), **options)}
    assert sorted(results) == [0, 1, 2]
    assert isinstance(results[1], AudioError), results[1]
    assert str(victim) in str(results[1]) and "\n" not in str(results[1])
    alone = [r for _, _, r in transcribe_many(good, **options)]
    assert [results[0], results[2]] == alone


def test_a_short_file_is_decoded_once(tiny, short_clips, monkeypatch):
    """A file of at most KEEP_SECONDS keeps its samples from the first reading: one decoding,
    and the same result as the streamed two-pass reading."""
    calls = []
    decode = batched.decode_chunks
    monkeypatch.setattr(batched, "decode_chunks", lambda file: calls.append(file) or decode(file))
    path = str(short_clips[0].path)
    options = dict(model=tiny, batch_size=4, temperature=0.0)
    [(_, _, once)] = transcribe_many([path], **options)
    assert calls == [path]
    monkeypatch.setattr(batched, "KEEP_SECONDS", 0.0)
    [(_, _, twice)] = transcribe_many([path], **options)
    assert calls == [path, path, path]
    assert isinstance(once, dict) and once == twice


@pytest.fixture(scope="module")
def long_file(clips, tmp_path_factory):
    """Eleven minutes: a sentence, ten minutes of digital silence, the long story (cheap to decode:
    the silence has no speech chunk with the VAD and silent 30 s windows without it)."""
    import subprocess

    folder = tmp_path_factory.mktemp("long")
    silence, path = folder / "silence.wav", folder / "long.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", str(silence),
                    "trim", "0", "600"], check=True)
    subprocess.run(["sox", str(clips["en_weather"].path), str(silence), str(clips["en_long_story"].path), str(path)],
                   check=True)
    return path


@pytest.mark.parametrize("vad_filter", [True, False], ids=["vad", "windows"])
def test_a_long_file_is_not_held_whole(tiny, clips, long_file, vad_filter, monkeypatch):
    """A file longer than KEEP_SECONDS: the Python-side memory (numpy arrays, traced by
    tracemalloc) stays far under the file's float32 samples: while the file is read (its first pass, up to the first batch) and whenever
    a batch starts decoding. Reading the whole file (load_audio) would hold all of it, and more
    while decoding it."""
    import tracemalloc
    import wave

    from whisper_mlx import batched

    with wave.open(str(long_file)) as w:
        whole_bytes = 4 * w.getnframes()  # the file as float32 samples
    assert whole_bytes > 40_000_000
    live, first_peak = [], []
    encode = batched.embed_audio

    def measured(model, mel):
        current, peak = tracemalloc.get_traced_memory()
        live.append(current)
        if not first_peak:
            first_peak.append(peak)
        return encode(model, mel)

    monkeypatch.setattr(batched, "embed_audio", measured)
    # the first reading keeps a file's samples only up to KEEP_SECONDS: here 60 s, so what is kept
    # before the file turns out long stays small beside the bound
    monkeypatch.setattr(batched, "KEEP_SECONDS", 60.0)
    tracemalloc.start()
    try:
        results = [r for _, _, r in transcribe_many([str(long_file)], model=tiny, batch_size=1, temperature=0.0,
                                                    vad_filter=vad_filter)]
    finally:
        tracemalloc.stop()
    assert len(live) >= 2, live  # decoded in several batches
    bound = whole_bytes // 4
    assert first_peak[0] < bound, (first_peak, whole_bytes)
    assert max(live) < bound, (live, whole_bytes)
    truth = f'{clips["en_weather"].text} {clips["en_long_story"].text}'
    assert wer(truth, results[0]["text"]) <= 0.2, results[0]["text"]
    assert results[0]["segments"][-1]["end"] > 640


def test_the_next_input_is_read_while_the_model_works(tiny, short_clips, monkeypatch):
    """Pass 1 of the next input runs on the read-ahead thread, started before the batch of the
    input before it has left the encoder; the results are those of one input at a time."""
    import threading

    from whisper_mlx.batched import BatchedTranscriber

    events = []
    read, encode = BatchedTranscriber._read, batched.embed_audio

    def reading(self, index, audio):
        events.append(("read", index, threading.current_thread().name))
        return read(self, index, audio)

    def encoding(model, mel):
        out = encode(model, mel)
        events.append(("encoded", None, threading.current_thread().name))
        return out

    monkeypatch.setattr(BatchedTranscriber, "_read", reading)
    monkeypatch.setattr(batched, "embed_audio", encoding)
    paths = [str(c.path) for c in short_clips[:3]]
    options = dict(model=tiny, batch_size=1, temperature=0.0)
    together = sorted(transcribe_many(paths, **options), key=lambda r: r[0])
    reads = [e for e in events if e[0] == "read"]
    assert [e[1] for e in reads] == [0, 1, 2]
    assert all(e[2].startswith("whisper-mlx-read") for e in reads), reads
    # input 1's reading began before input 0's batch left the encoder (events in the order they happened)
    assert events.index(reads[1]) < next(k for k, e in enumerate(events) if e[0] == "encoded")
    one_at_a_time = [r for p in paths for _, _, r in transcribe_many([p], **options)]
    assert [r for _, _, r in together] == one_at_a_time


# ---------------------------------------------------------------- packed windows (several inputs' speech in one)


def _decoded(result: dict) -> tuple:
    """A result's text and its segments' times, text and tokens."""
    return result["text"], [(s["start"], s["end"], s["text"], s["tokens"]) for s in result["segments"]]


def _errors(truth: str, text: str) -> int:
    from zoo.gates import word_errors

    return word_errors(truth, text)[0]


@pytest.fixture(scope="module")
def packed_runs(tiny, short_clips):
    """The short parity clips as one many-file run with the VAD: packed and not (word timestamps),
    and packed without word timestamps; with the rows of each encoder call counted."""
    paths = [str(c.path) for c in short_clips]
    runs, rows = {}, {}
    encode = batched.embed_audio
    for name, pack, words in [("unpacked", False, True), ("packed", True, True), ("packed, no words", True, False)]:
        seen: list[int] = []
        with pytest.MonkeyPatch.context() as m:
            m.setattr(batched, "embed_audio", lambda model, mel: seen.append(mel.shape[0]) or encode(model, mel))
            out = {i: r for i, _, r in transcribe_many(paths, model=tiny, batch_size=8, vad_filter=True, pack=pack,
                                                        temperature=0.0, word_timestamps=words)}
        assert sorted(out) == list(range(len(paths))) and all(isinstance(r, dict) for r in out.values()), out
        runs[name], rows[name] = out, seen
    return runs, rows


def test_packing_puts_several_inputs_in_one_window(short_clips, packed_runs):
    """6-10 s clips: three or so share a 30 s window, so the encoder sees far fewer windows."""
    _, rows = packed_runs
    assert sum(rows["unpacked"]) == len(short_clips)
    assert sum(rows["packed"]) <= len(short_clips) // 2, rows


def test_packed_inputs_get_their_own_text(short_clips, packed_runs):
    """Each input's text is its own speech, as right against the known truth as without packing
    (at most one word more wrong), and it ends on its own last word (a word given to the wrong
    input at the seam between two would change one of them).

    Not equal text: Whisper reads a window as one utterance, and some choices follow the window's
    context (numbers as digits or words: "9" alone, "nine" after another clip's sentence), so a
    word or two change either way; on these clips packing happens to err less in total."""
    from zoo.gates import normalize

    runs, _ = packed_runs
    packed = [_errors(c.text, runs["packed"][i]["text"]) for i, c in enumerate(short_clips)]
    alone = [_errors(c.text, runs["unpacked"][i]["text"]) for i, c in enumerate(short_clips)]
    assert all(p <= a + 1 for p, a in zip(packed, alone)), (packed, alone)
    for i, clip in enumerate(short_clips):
        text = runs["packed"][i]["text"]
        assert wer(clip.text, text) <= 0.3 and normalize(text)[-1] == normalize(clip.text)[-1], (clip.id, text)


def test_packed_times_are_each_inputs_own(short_clips, packed_runs):
    """Segment and word times of a packed input are in its own time: inside its duration, in order,
    its first word where it starts alone (within a second: the window's seam is a silence)."""
    from whisper_mlx.audio import load_audio

    runs, _ = packed_runs
    for i, clip in enumerate(short_clips):
        duration = load_audio(clip.path).size / 16000
        segments = runs["packed"][i]["segments"]
        words = [w for s in segments for w in s["words"]]
        assert segments and words, clip.id
        for s in segments:
            assert 0 <= s["start"] <= s["end"] <= duration, (clip.id, s)
        assert all(0 <= w["start"] <= w["end"] <= duration for w in words), clip.id
        assert [w["start"] for w in words] == sorted(w["start"] for w in words), clip.id
        alone = [w for s in runs["unpacked"][i]["segments"] for w in s["words"]]
        assert abs(words[0]["start"] - alone[0]["start"]) < 1.0 and abs(words[-1]["end"] - alone[-1]["end"]) < 1.0


def test_packed_results_look_like_unpacked_ones(short_clips, packed_runs):
    """Without word_timestamps a packed input's segments carry no words (they were timed only to
    share the window out) and the same keys as unpacked ones; the text is the one timed."""
    runs, _ = packed_runs
    for i in range(len(short_clips)):
        plain, timed, unpacked = runs["packed, no words"][i], runs["packed"][i], runs["unpacked"][i]
        assert plain["text"] == timed["text"]
        assert [set(s) for s in plain["segments"]] == [set(s) - {"words"} for s in timed["segments"]]
        assert set(plain) == set(unpacked) and all("words" not in s for s in plain["segments"])
        assert {k for s in unpacked["segments"] for k in s} - {"words"} == {k for s in plain["segments"] for k in s}


def test_a_bad_input_among_packed_ones_fails_alone(tiny, short_clips, tmp_path, monkeypatch):
    """A file that is not audio, and one cut short after its first reading (its chunk was to share
    a window with others: every file takes the two-pass reading here, KEEP_SECONDS = 0), each
    give their one-line error; the good ones come out as they do packed together without them."""
    import shutil

    from whisper_mlx.audio import AudioError
    from whisper_mlx.batched import BatchedTranscriber

    monkeypatch.setattr(batched, "KEEP_SECONDS", 0.0)
    good = [str(c.path) for c in short_clips[:3]]
    victim, notes = tmp_path / "victim.wav", tmp_path / "notes.wav"
    shutil.copy(short_clips[3].path, victim)
    notes.write_text("this is not audio\n")

    def inputs():
        yield good[0]
        yield str(victim)
        data = victim.read_bytes()  # the victim has had its first reading: cut it now
        victim.write_bytes(data[: len(data) // 2])
        yield good[1]
        yield str(notes)
        yield good[2]

    decode, groups = BatchedTranscriber._decode, []

    def decoding(self, windows, language):
        groups.extend([source.name for source, _ in w.parts] for w in windows)
        return decode(self, windows, language)

    monkeypatch.setattr(BatchedTranscriber, "_decode", decoding)
    options = dict(model=tiny, batch_size=8, vad_filter=True, pack=True, temperature=0.0)
    results = {i: r for i, _, r in transcribe_many(inputs(), **options)}
    assert sorted(results) == [0, 1, 2, 3, 4]
    for k, path in [(1, victim), (3, notes)]:
        assert isinstance(results[k], AudioError), results[k]
        assert str(path) in str(results[k]) and "\n" not in str(results[k])
    assert sorted(name for group in groups for name in group) == sorted(good)
    assert max(len(group) for group in groups) >= 2, groups  # good ones shared a window
    by_path = {good[0]: results[0], good[1]: results[2], good[2]: results[4]}
    for group in list(groups):  # (log probabilities differ in the last digits: the batch held other rows then)
        assert [_decoded(r) for _, _, r in transcribe_many(group, **options)] == [_decoded(by_path[p]) for p in group]
    for clip, path in zip(short_clips, good):
        assert wer(clip.text, by_path[path]["text"]) <= 0.3, by_path[path]["text"]


def test_no_pack_through_the_command(tiny_en_fp32_dir, tiny, short_clips, packed_runs, tmp_path):
    """--no-pack: each file's speech in its own windows, as transcribe_many(pack=False); packing
    is what the command does by default (the texts differ on these clips, so the option shows)."""
    runs, _ = packed_runs
    out = tmp_path / "out"
    proc = run_cli(*(str(c.path) for c in short_clips[:3]), "--model", str(tiny_en_fp32_dir), "--batch-size", "8",
                   "--no-pack", "--output-format", "json", "--output-dir", str(out), "--beam-size", "None",
                   "--temperature", "0", "--temperature-increment-on-fallback", "None")
    assert proc.returncode == 0, proc.stderr
    written = [json.loads((out / f"{c.path.stem}.json").read_text())["text"] for c in short_clips[:3]]
    assert written == [runs["unpacked"][i]["text"] for i in range(3)]
    assert written != [runs["packed"][i]["text"] for i in range(3)]


def test_words_of_a_later_chunk_keep_their_times(tiny, clips):
    """A file of two VAD chunks: the second chunk's words are timed from that chunk's start once,
    where the sequential loop puts them (they were once all pressed onto the chunk's end)."""
    path = str(clips["en_long_story"].path)
    [(_, _, result)] = transcribe_many([path], model=tiny, batch_size=8, vad_filter=True, temperature=0.0,
                                       word_timestamps=True)
    assert len(result["segments"]) >= 2
    sequential = whisper_mlx.transcribe(path, model=tiny, temperature=0.0, word_timestamps=True)
    later = result["segments"][-1]["words"]
    assert later[-1]["start"] - later[0]["start"] > 5.0, later
    last = [w for s in sequential["segments"] for w in s["words"]][-1]
    assert abs(later[-1]["end"] - last["end"]) < 0.3, (later[-1], last)


def test_packed_segments_go_whole_to_their_input_unless_one_spans_two():
    """Two inputs at 0-5 s and 5.5-10 s of a packed window: segments inside one span (a decoded
    end may reach SEGMENT_SLACK_S past it) go whole, in that input's time; a segment across the
    seam makes the window's words decide (`_split`), each run of words a segment of its input."""
    spans = [(0.0, 5.0), (5.5, 10.0)]
    first = {"start": 0.2, "end": 5.2, "text": " One two.", "tokens": [1, 2]}
    second = {"start": 5.6, "end": 9.8, "text": " Three.", "tokens": [3]}
    per_part = batched._whole_segments([first, second], spans)
    assert [[s["text"] for s in part] for part in per_part] == [[" One two."], [" Three."]]
    assert (per_part[0][0]["start"], per_part[0][0]["end"]) == (0.2, 5.0)  # clamped into its input
    assert (per_part[1][0]["start"], per_part[1][0]["end"]) == (0.1, 4.3)
    across = {"start": 3.0, "end": 8.0, "text": " four five", "tokens": [4, 5],
              "words": [{"word": " four", "start": 3.0, "end": 4.0}, {"word": " five", "start": 6.0, "end": 8.0}]}
    assert batched._whole_segments([across], spans) is None

    class Tokens:  # token i spells word i of the segment
        eot = 100

        def decode(self, ids):
            return "".join({4: " four", 5: " five"}[i] for i in ids)

        def encode(self, text):
            raise AssertionError("the segment's own tokens spell its words")

    per_part = batched._split([across], spans, Tokens())
    assert [[(s["text"], s["tokens"], s["start"], s["end"]) for s in part] for part in per_part] == [
        [(" four", [4], 3.0, 4.0)], [(" five", [5], 0.5, 2.5)]]


@pytest.mark.parametrize("seconds", [0.5, 7.0, 29.98, 29.99, 30.0])
@pytest.mark.parametrize("scale", [0.1, 1e-6, 0.0])
def test_a_chunk_window_equals_the_sequential_paths_window(seconds, scale):
    """A chunk's window is computed over its frames only (not the sequential path's further 30 s
    of padding), with exactly the values, silence flag and content frames of the sequential path's
    first window of the same audio: up to 30 s, within a frame's reach of the end, and silence."""
    from whisper_mlx.audio import N_FRAMES, load_mel, pad_or_trim

    audio = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * scale).astype(np.float32)
    mel = load_mel(audio, 80)
    frames = min(N_FRAMES, mel.content_frames)
    window, got_frames, silent = batched._mel(audio, 80)
    assert (got_frames, silent) == (frames, mel.is_silent(0, frames))
    assert np.array_equal(np.array(window), np.array(pad_or_trim(mel.segment(0, frames), N_FRAMES, axis=0)))
