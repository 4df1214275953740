"""The `whisper-mlx` command: openai-whisper's CLI on MLX, plus `whisper-mlx doctor`,
`whisper-mlx serve` (the OpenAI-compatible server, whisper_mlx.server) and `whisper-mlx corpus`
(many files on a Ray cluster, whisper_mlx.corpus).

The model is loaded once; each file is transcribed and written in turn. A file that fails costs
one line on stderr (`whisper-mlx: error: <file>: <problem>`) and exit status 1; the others are
still transcribed. Usage errors exit with 2. `--debug` adds tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__, runtime, vad
from .audio import STDIN, AudioError
from .decoding import DecodingOptions, check_options
from .load import ModelLoadError, ModelOutputError, load_model
from .tokenizer import LANGUAGES, TO_LANGUAGE_CODE
from .transcribe import parse_clip_timestamps, transcribe
from .writers import get_writer

PROG = "whisper-mlx"
_WORD_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")
# --vad-<field> -> VadOptions.<field>; help text and the type of each
_VAD_OPTIONS = {
    "threshold": (float, "speech probability at or above which a 32 ms frame is speech"),
    "neg_threshold": (float, "probability under which speech ends"),
    "min_speech_duration_ms": (int, "drop speech regions this short"),
    "max_speech_duration_s": (float, "split speech regions longer than this"),
    "min_silence_duration_ms": (int, "silence that ends a speech region"),
    "speech_pad_ms": (int, "padding kept on each side of a speech region"),
}


def str2bool(string: str) -> bool:
    """True/False as openai-whisper's CLI spells them (also accepts lower case, yes/no, 1/0)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(string.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False, got {string!r}")
    return value


def optional_int(string: str) -> int | None:
    return None if string == "None" else int(string)


def optional_float(string: str) -> float | None:
    return None if string == "None" else float(string)


def default_model() -> str:
    """A local `mlx_models/tiny.en` when present, else the zoo short name `tiny.en`."""
    return "mlx_models/tiny.en" if Path("mlx_models/tiny.en").is_dir() else "tiny.en"


def version_line() -> str:
    """Package version and what it computes on."""
    info = runtime.report()
    return f"{PROG} {__version__} (mlx {info['mlx']}, device {info['device']}, BLAS {info['blas']})"


def doctor(model_name: str | None = None) -> str:
    """`whisper-mlx doctor [--model M]`: the runtime's backend report, one `key: value` per line;
    with a model, the backend that runs it here and why (e.g. the MLX graph where a fast path
    cannot take the model)."""
    report = runtime.report()
    if model_name is not None:
        from . import backends

        model = load_model(model_name)
        d = model.dims
        report["model"] = (f"{model_name} ({d.n_mels} mel bins, {d.n_text_layer} decoder layers, "
                           f"{d.n_audio_layer} encoder layers, width {d.n_audio_state})")
        report["model backend"] = f"{backends.backend_for(model).name} ({backends.reason_for(model)})"
    return "\n".join(f"{key}: {value}" for key, value in report.items())


class _Version(argparse.Action):
    """--version, printed unwrapped (argparse's own action reflows the BLAS path)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def _add(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """An option spelled both `--max-line-width` and openai-whisper's `--max_line_width`."""
    dashed = "--" + name.replace("_", "-")
    flags = [dashed] if "_" not in name else [dashed, "--" + name]
    parser.add_argument(*flags, dest=name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (openai-whisper's options; dashes or underscores)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Transcribe or translate audio with Whisper on MLX. `whisper-mlx doctor` reports the backend; "
                    "`whisper-mlx serve --help`: the OpenAI-compatible server; `whisper-mlx corpus --help`: many files "
                    "on a Ray cluster.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("audio", nargs="+",
                   help="audio or video file(s) to transcribe; also http(s) URLs, named pipes, and - for standard input")
    p.add_argument("--version", action=_Version, help="print the version and backend, then exit")
    _add(p, "model", default=default_model(), help="model directory, Hub repo id or zoo short name")
    p.add_argument("--output-dir", "--output_dir", "-o", dest="output_dir", default=".", help="directory for the outputs")
    _add(p, "output_name", default=None,
         help="base name of the output files (one audio input only; default: the input's name, `stdin` for -)")
    p.add_argument("--output-format", "--output_format", "-f", dest="output_format", default="all",
                   choices=["txt", "vtt", "srt", "tsv", "json", "all"], help="output format(s)")
    _add(p, "verbose", type=str2bool, default=True, help="print segments as they are decoded (False: progress bar)")
    _add(p, "device", choices=["cpu", "gpu"], default=None, help="MLX device (default: the GPU where there is one)")
    _add(p, "dtype", choices=["float16", "float32", "bfloat16"], default=None,
         help="compute dtype (default: float32 on the CPU, the stored dtype on a GPU)")
    _add(p, "backend", choices=["mlx", "cpu", "cuda"], default=None,
         help="decoding backend (default: chosen for this machine, see `whisper-mlx doctor`; also WHISPER_MLX_BACKEND)")
    _add(p, "debug", action="store_true", help="print tracebacks for errors")

    _add(p, "task", default="transcribe", choices=["transcribe", "translate"],
         help="X->X speech recognition or X->English translation")
    _add(p, "language", default=None,
         choices=sorted(LANGUAGES) + sorted(k.title() for k in TO_LANGUAGE_CODE), metavar="LANGUAGE",
         help="language spoken in the audio, a code (en) or name (English); default: detect")

    _add(p, "temperature", type=float, default=0, help="temperature to use for sampling")
    _add(p, "best_of", type=optional_int, default=5, help="candidates when sampling with non-zero temperature")
    _add(p, "beam_size", type=optional_int, default=5, help="beams in beam search (temperature zero only)")
    _add(p, "patience", type=float, default=None, help="beam search patience (1.0: conventional beam search)")
    _add(p, "length_penalty", type=float, default=None, help="token length penalty alpha (default: length normalization)")

    _add(p, "suppress_tokens", default="-1", help="comma-separated token ids to suppress; -1: most special characters")
    _add(p, "initial_prompt", default=None, help="text to provide as a prompt for the first window")
    _add(p, "carry_initial_prompt", type=str2bool, default=False, help="prepend initial_prompt to every window")
    _add(p, "condition_on_previous_text", type=str2bool, default=True,
         help="prompt each window with the previous window's text")

    _add(p, "temperature_increment_on_fallback", type=optional_float, default=0.2,
         help="temperature increase when a decoding fails the thresholds below")
    _add(p, "compression_ratio_threshold", type=optional_float, default=2.4,
         help="gzip compression ratio above which a decoding has failed")
    _add(p, "logprob_threshold", type=optional_float, default=-1.0,
         help="average log probability below which a decoding has failed")
    _add(p, "no_speech_threshold", type=optional_float, default=0.6,
         help="no-speech probability above which a window that failed logprob_threshold is silence")
    _add(p, "word_timestamps", type=str2bool, default=False, help="word-level timestamps")
    _add(p, "prepend_punctuations", default="\"'“¿([{-", help="punctuation merged with the next word")
    _add(p, "append_punctuations", default="\"'.。,，!！?？:：”)]}、", help="punctuation merged with the previous word")
    _add(p, "highlight_words", type=str2bool, default=False, help="(needs --word-timestamps True) underline words in srt/vtt")
    _add(p, "max_line_width", type=optional_int, default=None, help="(needs --word-timestamps True) characters per line")
    _add(p, "max_line_count", type=optional_int, default=None, help="(needs --word-timestamps True) lines per subtitle")
    _add(p, "max_words_per_line", type=optional_int, default=None,
         help="(needs --word-timestamps True, no effect with --max-line-width) words per subtitle")
    _add(p, "clip_timestamps", default="0", help="start,end,start,end,... seconds of the clips to process")
    _add(p, "hallucination_silence_threshold", type=optional_float, default=None,
         help="(needs --word-timestamps True) skip silences longer than this around suspected hallucinations")

    _add(p, "batch_size", type=optional_int, default=None,
         help="decode this many 30 s chunks together, across all the files given (batched mode: chunks "
              "are not conditioned on previous text; each file's outputs are written as soon as it is done)")
    p.add_argument("--no-pack", dest="pack", action="store_false",
                   help="(needs --batch-size) give each file's speech its own 30 s windows; by default, with the VAD, "
                        "the speech of several short files shares a window (fewer windows to decode)")

    _add(p, "vad_filter", type=str2bool, nargs="?", const=True, default=None,
         help="cut non-speech (Silero VAD) before decoding; times stay those of the original audio "
              '(needs onnxruntime: pip install "whisper-mlx[vad]"); default: off, but on with --batch-size '
              "where onnxruntime is installed")
    defaults = vad.VadOptions()
    for name, (kind, text) in _VAD_OPTIONS.items():
        default = "threshold - 0.15" if name == "neg_threshold" else getattr(defaults, name)
        # None means "VadOptions' default", shown instead; %(default).0s prints nothing and keeps
        # the help formatter from appending "(default: None)"
        _add(p, f"vad_{name}", type=kind, default=None, metavar=kind.__name__.upper(),
             help=f"(needs --vad-filter) {text} (default: {default})%(default).0s")
    return p


def _vad_parameters(args: dict) -> dict:
    """The --vad-* options given, as VadOptions fields (popped from args)."""
    given = {name: args.pop(f"vad_{name}") for name in _VAD_OPTIONS}
    return {name: value for name, value in given.items() if value is not None}


def _check_args(parser: argparse.ArgumentParser, args: dict) -> None:
    """Usage errors openai-whisper's CLI refuses, plus malformed --clip-timestamps."""
    if not args["word_timestamps"]:
        for option in _WORD_OPTIONS:
            if args[option]:
                parser.error(f"--{option.replace('_', '-')} requires --word-timestamps True")
    if args["max_line_count"] and not args["max_line_width"]:
        warnings.warn("--max-line-count has no effect without --max-line-width")
    if args["max_words_per_line"] and args["max_line_width"]:
        warnings.warn("--max-words-per-line has no effect with --max-line-width")
    try:
        parse_clip_timestamps(args["clip_timestamps"])
    except ValueError as e:
        parser.error("--clip-timestamps" + str(e).removeprefix("clip_timestamps"))
    if args["output_name"] is not None and len(args["audio"]) > 1:
        parser.error("--output-name names the outputs of one audio input, not of several")
    if args["output_name"] is not None and (os.sep in args["output_name"] or args["output_name"] in ("", ".", "..")):
        parser.error(f"--output-name {args['output_name']!r}: a file name without a directory (see --output-dir)")
    if args["audio"].count(STDIN) > 1:
        parser.error("standard input (-) can be read only once")
    if args["batch_size"] is not None and args["batch_size"] < 1:
        parser.error(f"--batch-size: expected a positive number of chunks, got {args['batch_size']}")
    if not args["pack"] and args["batch_size"] is None:
        parser.error("--no-pack requires --batch-size")
    for name in _VAD_OPTIONS:
        if args[f"vad_{name}"] is not None and not args["vad_filter"]:
            parser.error(f"--vad-{name.replace('_', '-')} requires --vad-filter")
    try:
        vad.VadOptions(**{name: args[f"vad_{name}"] for name in _VAD_OPTIONS if args[f"vad_{name}"] is not None})
    except vad.VadOptionError as e:
        parser.error(f"--vad-{e.field.replace('_', '-')}: {str(e).split(': ', 1)[1]}")


def _output_dir_problem(output_dir: str) -> str | None:
    """Why outputs cannot be written into `output_dir` (or, when it does not exist yet, why it
    cannot be created), found before any work by creating an unnamed temporary file in it (or in
    the existing folder it would be made in); None if they can."""
    target = probe = os.path.abspath(output_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    where = "" if probe == target else f"cannot be created in {probe}: "
    if not os.path.isdir(probe):
        return f"{where}not a directory"
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        return f"{where}not writable ({e.strerror or e})"
    return None


def _fail(target: str, e: BaseException, debug: bool) -> None:
    """One line on stderr naming the file and the problem (a traceback too with --debug)."""
    if debug:
        traceback.print_exception(e)
    problem = str(e) if isinstance(e, (AudioError, ModelLoadError)) else f"{type(e).__name__}: {e}"
    if not problem.startswith(f"{target}: ") and not isinstance(e, ModelLoadError):
        problem = f"{target}: {problem}"
    print(f"{PROG}: error: {' '.join(problem.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 a file or the model failed, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["doctor"], ["--doctor"]):
        rest = argv[1:]
        if rest and (len(rest) != 2 or rest[0] != "--model"):
            print(f"{PROG}: error: usage: {PROG} doctor [--model MODEL]", file=sys.stderr)
            return 2
        try:
            print(doctor(rest[1] if rest else None))
        except ModelLoadError as e:
            _fail(rest[1], e, debug=False)
            return 1
        return 0
    if argv[:1] == ["serve"]:
        from .server import main as serve

        return serve(argv[1:])
    if argv[:1] == ["corpus"]:
        from .corpus import main as corpus

        return corpus(argv[1:])
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    _check_args(parser, args)
    debug = args.pop("debug")
    model_name, output_dir = args.pop("model"), args.pop("output_dir")
    output_format, device, dtype = args.pop("output_format"), args.pop("device"), args.pop("dtype")
    backend = args.pop("backend")

    if args["vad_filter"] and not vad.onnxruntime_available():
        print(f"{PROG}: error: --vad-filter needs onnxruntime, which is not installed: {vad.INSTALL_HINT}",
              file=sys.stderr)
        return 1
    args["vad_parameters"] = _vad_parameters(args)
    try:
        runtime.set_device(device)
    except (RuntimeError, ValueError) as e:
        print(f"{PROG}: error: --device {device}: {e}", file=sys.stderr)
        return 2
    if problem := _output_dir_problem(output_dir):
        print(f"{PROG}: error: {output_dir}: {problem}", file=sys.stderr)
        return 1
    try:
        model = load_model(model_name, dtype=dtype, backend=backend)
        os.makedirs(output_dir, exist_ok=True)
    except (ModelLoadError, OSError) as e:
        _fail(model_name if not isinstance(e, OSError) else output_dir, e, debug)
        return 1
    except ValueError as e:  # a backend that cannot run this model here
        print(f"{PROG}: error: --backend {backend}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130

    if args["language"] is not None:
        args["language"] = TO_LANGUAGE_CODE.get(args["language"].lower(), args["language"])
    try:
        check_options(DecodingOptions(task=args["task"], language=args["language"]), model.is_multilingual,
                      model.num_languages)
    except ValueError as e:
        print(f"{PROG}: error: {model_name}: {e}", file=sys.stderr)
        return 2
    temperature = args.pop("temperature")
    increment = args.pop("temperature_increment_on_fallback")
    temperatures = tuple(float(t) for t in np.arange(temperature, 1.0 + 1e-6, increment)) if increment else (temperature,)
    writer = get_writer(output_format, output_dir)
    writer_args = {option: args.pop(option) for option in _WORD_OPTIONS}
    writer_args["output_name"] = args.pop("output_name")

    batch_size, pack = args.pop("batch_size"), args.pop("pack")
    if batch_size is not None:
        try:
            return _run_batched(model, args, temperatures, batch_size, pack, writer, writer_args, debug)
        except ModelOutputError as e:  # the model, not a file: every file would fail the same way
            print(f"{PROG}: error: {model_name}: {e}", file=sys.stderr)
            return 1
    failed = 0
    for audio_path in args.pop("audio"):
        try:
            result = transcribe(audio_path, model=model, temperature=temperatures, **args)
            writer(result, audio_path, **writer_args)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except ModelOutputError as e:  # the model, not the file: the others would fail the same way
            print(f"{PROG}: error: {model_name}: {e} (on {audio_path})", file=sys.stderr)
            return 1
        except Exception as e:  # one bad file must not stop the others
            _fail(audio_path, e, debug)
            failed += 1
    return 1 if failed else 0


# options of the sequential seek loop that batched mode does not have
_SEQUENTIAL_ONLY = ("verbose", "initial_prompt", "carry_initial_prompt", "condition_on_previous_text",
                    "clip_timestamps", "hallucination_silence_threshold")


def _run_batched(model, args: dict, temperatures: tuple, batch_size: int, pack: bool, writer, writer_args: dict,
                 debug: bool) -> int:
    """--batch-size: every file's chunks through one batched decoder; each file's outputs are
    written when its last chunk is decoded; a file that fails is reported and the rest go on."""
    from .batched import transcribe_many

    paths = args.pop("audio")
    for option in _SEQUENTIAL_ONLY:
        args.pop(option, None)
    failed = 0
    try:
        for _, path, result in transcribe_many(paths, model=model, batch_size=batch_size, temperature=temperatures,
                                               pack=pack, **args):
            try:
                if isinstance(result, Exception):
                    raise result
                writer(result, path, **writer_args)
            except Exception as e:  # one bad file must not stop the others
                _fail(path, e, debug)
                failed += 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
