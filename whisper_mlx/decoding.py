"""Decode one 30 s window: options, logit filters, greedy / sampling / beam search, language id.

The network runs in MLX (on Linux CPUs the decoder step runs in the C kernel instead:
`KernelInference`); the per-token bookkeeping (logit filters, argmax, beam bookkeeping) runs
in NumPy on the last position's logits, which is exact in float32 and cheaper than many tiny
device ops per token.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import mlx.core as mx
import numpy as np

from . import backend, cpu_kernels, gpu
from .audio import CHUNK_LENGTH
from .model import Whisper
from .tokenizer import Tokenizer, get_tokenizer

LogitFilter = Callable[[np.ndarray, np.ndarray], None]
"""Edits logits (n_batch, n_vocab) in place, given the tokens so far (n_batch, n_tokens)."""

_rng = np.random.default_rng()


def compression_ratio(text: str) -> float:
    """How well the text gzips: high values flag repetitive (looping) output."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = np.max(x, axis=-1, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.sum(np.exp(x - m))))


@dataclass(frozen=True)
class DecodingOptions:
    """What to decode and how, as in openai-whisper."""

    task: str = "transcribe"  # "transcribe", "translate" or "lang_id"
    language: str | None = None  # None: detect
    temperature: float = 0.0
    sample_len: int | None = None  # max tokens to sample
    best_of: int | None = None  # independent samples when temperature > 0
    beam_size: int | None = None  # beam search when temperature == 0
    patience: float | None = None
    length_penalty: float | None = None  # None: length normalization
    prompt: str | list[int] | None = None  # previous text as context
    prefix: str | list[int] | None = None  # forced start of the current window
    suppress_tokens: str | Sequence[int] | None = "-1"  # "-1": non-speech symbols
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    fp16: bool = True  # accepted for compatibility; the compute dtype follows the loaded model


@dataclass(frozen=True)
class DecodingResult:
    audio_features: mx.array
    language: str
    language_probs: dict[str, float] | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = np.nan
    no_speech_prob: float = np.nan
    temperature: float = np.nan
    compression_ratio: float = np.nan


class Inference:
    """The decoder over one batch of audio features, with its kv_cache between steps."""

    def __init__(self, model: Whisper, audio_features: mx.array):
        self.model = model
        self.cross_kv = model.decoder.cross_kv(audio_features)
        self.kv_cache = None

    def logits(self, tokens: np.ndarray, rows: Sequence[int] = (-1,)) -> np.ndarray:
        """Logits (n_batch, len(rows), n_vocab) at the given positions; feeds only new tokens."""
        new = tokens if self.kv_cache is None else tokens[:, -1:]
        hidden, self.kv_cache = self.model.decoder(mx.array(new), self.cross_kv, self.kv_cache)
        picked = hidden[:, list(rows)] if hidden.shape[1] > 1 else hidden
        return np.array(self.model.decoder.logits(picked), copy=False)

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if list(source_indices) != list(range(len(source_indices))):
            idx = mx.array(source_indices)
            self.kv_cache = [(k[idx], v[idx]) for k, v in self.kv_cache]


class KernelInference(Inference):
    """Inference through the C decoder step (CPU, kernels built, float16-exact weight matrices):
    one call runs every layer for the new tokens, instead of a graph of ~300 MLX operations whose
    per-operation cost on the CPU outweighs the arithmetic of a one-token step."""

    def __init__(self, model: Whisper, audio_features: mx.array):
        self.model = model
        self.kv_cache = cpu_kernels.DecoderCache(model.decoder.kernel, audio_features, audio_features.shape[0])

    def logits(self, tokens: np.ndarray, rows: Sequence[int] = (-1,)) -> np.ndarray:
        new = tokens if self.kv_cache.offset == 0 else tokens[:, -1:]
        rows = list(rows) if new.shape[1] > 1 else [0]
        return cpu_kernels.decode_tokens(self.model.decoder.kernel, self.kv_cache, new, rows)

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if list(source_indices) != list(range(len(source_indices))):
            self.kv_cache.rearrange(list(source_indices))


def make_inference(model: Whisper, audio_features: mx.array) -> Inference:
    """The C decoder step where the model has one (`TextDecoder.prepare_cpu`), else the MLX graph."""
    if model.decoder.kernel is not None and backend.on_cpu():
        return KernelInference(model, audio_features)
    return Inference(model, audio_features)


# ---- logit filters ---------------------------------------------------------------------------


def suppress_blank(tokenizer: Tokenizer, sample_begin: int) -> LogitFilter:
    """At the first sampled position, forbid a blank and end-of-text."""
    blank = tokenizer.encode(" ") + [tokenizer.eot]

    def apply(logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == sample_begin:
            logits[:, blank] = -np.inf

    return apply


def suppress_tokens(ids: Sequence[int]) -> LogitFilter:
    ids = list(ids)

    def apply(logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, ids] = -np.inf

    return apply


def apply_timestamp_rules(
    tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: int | None
) -> LogitFilter:
    """Timestamps come in non-decreasing pairs; the first token is a timestamp; prefer timestamps
    when their total probability beats any single text token (openai/whisper's rules)."""
    ts_begin, eot, no_ts = tokenizer.timestamp_begin, tokenizer.eot, tokenizer.no_timestamps

    def apply(logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, no_ts] = -np.inf
        for k in range(tokens.shape[0]):
            sampled = tokens[k, sample_begin:]
            last_was_ts = len(sampled) >= 1 and sampled[-1] >= ts_begin
            penultimate_was_ts = len(sampled) < 2 or sampled[-2] >= ts_begin
            if last_was_ts:
                if penultimate_was_ts:
                    logits[k, ts_begin:] = -np.inf
                else:
                    logits[k, :eot] = -np.inf
            timestamps = sampled[sampled >= ts_begin]
            if timestamps.size > 0:
                last = timestamps[-1] if last_was_ts and not penultimate_was_ts else timestamps[-1] + 1
                logits[k, ts_begin:last] = -np.inf
        if tokens.shape[1] == sample_begin:
            logits[:, :ts_begin] = -np.inf
            if max_initial_timestamp_index is not None:
                logits[:, ts_begin + max_initial_timestamp_index + 1 :] = -np.inf
        logprobs = log_softmax(logits)
        for k in range(tokens.shape[0]):
            if logsumexp(logprobs[k, ts_begin:]) > logprobs[k, :ts_begin].max():
                logits[k, :ts_begin] = -np.inf

    return apply


# ---- token decoders --------------------------------------------------------------------------


def greedy_update(
    tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray, temperature: float, eot: int
) -> tuple[np.ndarray, bool]:
    """Pick (argmax, or sample at temperature) the next token of each sequence."""
    if temperature == 0:
        next_tokens = logits.argmax(axis=-1)
    else:
        scaled = logits / temperature
        probs = np.exp(log_softmax(scaled).astype(np.float64))
        probs /= probs.sum(axis=-1, keepdims=True)
        next_tokens = np.array([_rng.choice(probs.shape[-1], p=p) for p in probs])
    logprobs = log_softmax(logits)
    current = logprobs[np.arange(len(next_tokens)), next_tokens]
    sum_logprobs += current * (tokens[:, -1] != eot)
    next_tokens[tokens[:, -1] == eot] = eot
    tokens = np.concatenate([tokens, next_tokens[:, None]], axis=-1)
    return tokens, bool((tokens[:, -1] == eot).all())


@dataclass
class BeamSearch:
    """Beam search with patience, keeping finished hypotheses per audio (openai/whisper's)."""

    beam_size: int
    eot: int
    inference: Inference
    patience: float | None = None
    finished: list[dict] | None = None

    @property
    def max_candidates(self) -> int:
        return round(self.beam_size * (self.patience or 1.0))

    def update(self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray):
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished is None:
            self.finished = [{} for _ in range(n_audio)]
        logprobs = log_softmax(logits)
        next_tokens, sources, newly_finished = [], [], []
        for i in range(n_audio):
            scores, origin, finished = {}, {}, {}
            for j in range(self.beam_size):
                idx = i * self.beam_size + j
                prefix = tokens[idx].tolist()
                top = np.argsort(-logprobs[idx], kind="stable")[: self.beam_size + 1]
                for token in top:
                    sequence = tuple(prefix + [int(token)])
                    scores[sequence] = float(sum_logprobs[idx] + logprobs[idx, token])
                    origin[sequence] = idx
            saved = 0
            for sequence in sorted(scores, key=scores.get, reverse=True):
                if sequence[-1] == self.eot:
                    finished[sequence] = scores[sequence]
                else:
                    sum_logprobs[len(next_tokens)] = scores[sequence]
                    next_tokens.append(sequence)
                    sources.append(origin[sequence])
                    saved += 1
                    if saved == self.beam_size:
                        break
            newly_finished.append(finished)
        self.inference.rearrange_kv_cache(sources)
        for previous, new in zip(self.finished, newly_finished):
            for seq in sorted(new, key=new.get, reverse=True):
                if len(previous) >= self.max_candidates:
                    break
                previous[seq] = new[seq]
        completed = all(len(s) >= self.max_candidates for s in self.finished)
        return np.array(next_tokens), completed

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray):
        for i, sequences in enumerate(self.finished):
            if len(sequences) < self.beam_size:
                for j in np.argsort(sum_logprobs[i])[::-1]:
                    sequences[tuple(tokens[i, j].tolist() + [self.eot])] = float(sum_logprobs[i][j])
                    if len(sequences) >= self.beam_size:
                        break
        return (
            [[np.array(s) for s in sequences] for sequences in self.finished],
            [list(sequences.values()) for sequences in self.finished],
        )


def rank(tokens: list[list[np.ndarray]], sum_logprobs: list[list[float]], length_penalty: float | None):
    """Index of the best sequence per audio: log probability over (penalized) length."""

    def score(logprob: float, length: int) -> float:
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return logprob / penalty

    return [
        int(np.argmax([score(lp, len(t)) for lp, t in zip(lps, ts)])) for ts, lps in zip(tokens, sum_logprobs)
    ]


# ---- the task --------------------------------------------------------------------------------

FAST_GREEDY: bool | None = None
"""Greedy decoding through `gpu.greedy` (one compiled graph per token, filters on the device):
None picks it off the CPU; True / False force it (tests run it on the CPU too)."""


def embed_audio(model: Whisper, mel: mx.array) -> mx.array:
    """The encoder pass over (batch, n_frames, n_mels) log-mel: off the CPU as one compiled graph
    (gpu.embed_audio). `decode` and `detect_language` accept its output in place of the mel."""
    return model.embed_audio(mel) if backend.on_cpu() else gpu.embed_audio(model, mel)


def _fast_greedy(options: DecodingOptions, n_sequences: int) -> bool:
    on = not backend.on_cpu() if FAST_GREEDY is None else FAST_GREEDY
    return on and n_sequences == 1 and options.temperature == 0 and options.beam_size is None


def detect_language(model: Whisper, mel: mx.array, tokenizer: Tokenizer | None = None):
    """Most likely language of each window: (language tokens, [{code: prob}]) for batched input,
    or (token, {code: prob}) for one window. `mel` may be audio features already."""
    if tokenizer is None:
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    if tokenizer.language is None or tokenizer.language_token not in tokenizer.sot_sequence:
        raise ValueError("This model doesn't have language tokens so it can't perform lang id")
    single = mel.ndim == 2
    if single:
        mel = mel[None]
    if mel.shape[-2:] != (model.dims.n_audio_ctx, model.dims.n_audio_state):
        mel = embed_audio(model, mel)
    n_audio = mel.shape[0]
    logits = make_inference(model, mel).logits(np.array([[tokenizer.sot]] * n_audio))[:, 0]
    lang_ids = np.array(tokenizer.all_language_tokens)
    masked = np.full_like(logits, -np.inf)
    masked[:, lang_ids] = logits[:, lang_ids]
    language_tokens = masked.argmax(axis=-1)
    probs = np.exp(log_softmax(masked))
    language_probs = [
        {code: float(probs[i, t]) for t, code in zip(tokenizer.all_language_tokens, tokenizer.all_language_codes)}
        for i in range(n_audio)
    ]
    if single:
        return int(language_tokens[0]), language_probs[0]
    return language_tokens, language_probs


def _picked_greedy(inference: KernelInference, picker, tokens: np.ndarray, sot_index: int, sample_len: int,
                   n_ctx: int, eot: int, no_speech: int) -> tuple[np.ndarray, float, float]:
    """Greedy decoding of one sequence through the C step and C pick: the NumPy loop's tokens,
    sum of log probabilities and no-speech probability, without its per-token NumPy passes."""
    both = inference.logits(tokens, rows=(sot_index, -1))
    no_speech_prob = float(np.exp(log_softmax(both[0, 0]))[no_speech])
    logits = both[0, -1].copy()
    sampled, total = [], 0.0
    for i in range(sample_len):
        token, logprob = picker(logits)
        sampled.append(token)
        total += logprob
        if token == eot or tokens.shape[1] + len(sampled) > n_ctx or i + 1 == sample_len:
            break
        logits = cpu_kernels.decode_tokens(inference.model.decoder.kernel, inference.kv_cache,
                                           np.array([[token]], np.int32), [0])[0, 0]
    return np.concatenate([tokens, np.array([sampled])], axis=1), total, no_speech_prob


def _verify(options: DecodingOptions) -> None:
    if options.beam_size is not None and options.best_of is not None:
        raise ValueError("beam_size and best_of can't be given together")
    if options.temperature == 0 and options.best_of is not None:
        raise ValueError("best_of with greedy sampling (T=0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise ValueError("patience requires beam_size to be given")
    if options.length_penalty is not None and not 0 <= options.length_penalty <= 1:
        raise ValueError("length_penalty (alpha) should be a value between 0 and 1")


def _initial_tokens(tokenizer: Tokenizer, options: DecodingOptions, n_ctx: int, sample_len: int) -> tuple[int, ...]:
    sot_sequence = (
        tokenizer.sot_sequence_including_notimestamps if options.without_timestamps else tokenizer.sot_sequence
    )
    tokens = list(sot_sequence)
    if prefix := options.prefix:
        prefix_tokens = tokenizer.encode(" " + prefix.strip()) if isinstance(prefix, str) else list(prefix)
        tokens += prefix_tokens[-(n_ctx // 2 - sample_len) :]
    if prompt := options.prompt:
        prompt_tokens = tokenizer.encode(" " + prompt.strip()) if isinstance(prompt, str) else list(prompt)
        tokens = [tokenizer.sot_prev] + prompt_tokens[-(n_ctx // 2 - 1) :] + tokens
    return tuple(tokens)


def _suppressed(tokenizer: Tokenizer, suppress: str | Sequence[int] | None) -> tuple[int, ...]:
    if isinstance(suppress, str):
        suppress = [int(t) for t in suppress.split(",") if t.strip()]
    ids = [t for t in (suppress or []) if t >= 0]
    if suppress and -1 in suppress:
        ids.extend(tokenizer.non_speech_tokens)
    ids += [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm]
    ids.append(tokenizer.no_speech)
    return tuple(sorted(set(ids)))


def decode(model: Whisper, mel: mx.array, options: DecodingOptions = DecodingOptions(), **kwargs):
    """Decode 30 s window(s) of log-mel (n_frames, n_mels) or (batch, n_frames, n_mels), or their
    audio features; returns a DecodingResult, or a list of them for batched input."""
    if kwargs:
        options = replace(options, **kwargs)
    _verify(options)
    single = mel.ndim == 2
    if single:
        mel = mel[None]
    results = _run(model, mel, options)
    return results[0] if single else results


def _run(model: Whisper, mel: mx.array, options: DecodingOptions) -> list[DecodingResult]:
    tokenizer = get_tokenizer(
        model.is_multilingual,
        num_languages=model.num_languages,
        language=options.language or "en",
        task=options.task,
    )
    n_group = options.beam_size or options.best_of or 1
    n_ctx = model.dims.n_text_ctx
    sample_len = options.sample_len or n_ctx // 2
    initial = _initial_tokens(tokenizer, options, n_ctx, sample_len)
    sample_begin = len(initial)
    sot_index = initial.index(tokenizer.sot)

    if mel.shape[-2:] == (model.dims.n_audio_ctx, model.dims.n_audio_state):
        audio_features = mel
    else:
        audio_features = embed_audio(model, mel)
    n_audio = audio_features.shape[0]
    tokens = np.array([initial] * n_audio)

    languages = [options.language] * n_audio
    language_probs = None
    if options.language is None or options.task == "lang_id":
        lang_tokens, language_probs = detect_language(model, audio_features, tokenizer)
        languages = [max(p, key=p.get) for p in language_probs]
        if options.language is None:
            tokens[:, sot_index + 1] = lang_tokens
    if options.task == "lang_id":
        return [
            DecodingResult(audio_features=f, language=lang, language_probs=p)
            for f, lang, p in zip(audio_features, languages, language_probs)
        ]

    suppress_ids = _suppressed(tokenizer, options.suppress_tokens) if options.suppress_tokens else ()
    blank_ids = tuple(tokenizer.encode(" ") + [tokenizer.eot]) if options.suppress_blank else ()
    filters: list[LogitFilter] = []
    max_index = None
    if options.suppress_blank:
        filters.append(suppress_blank(tokenizer, sample_begin))
    if options.suppress_tokens:
        filters.append(suppress_tokens(suppress_ids))
    if not options.without_timestamps:
        precision = CHUNK_LENGTH / model.dims.n_audio_ctx
        max_index = round(options.max_initial_timestamp / precision) if options.max_initial_timestamp else None
        filters.append(apply_timestamp_rules(tokenizer, sample_begin, max_index))

    tokens = np.repeat(tokens, n_group, axis=0)
    grouped = mx.repeat(audio_features, n_group, axis=0) if n_group > 1 else audio_features
    fast = _fast_greedy(options, n_audio * n_group)
    inference = None if fast else make_inference(model, grouped)
    beam = BeamSearch(options.beam_size, tokenizer.eot, inference, options.patience) if options.beam_size else None
    sum_logprobs = np.zeros(tokens.shape[0], dtype=np.float64)
    no_speech_probs = [np.nan] * tokens.shape[0]

    timestamp_rules = None if options.without_timestamps else (
        tokenizer.timestamp_begin, tokenizer.no_timestamps, -1 if max_index is None else max_index)
    if fast:
        tokens, total, no_speech = gpu.greedy(
            model, audio_features, tuple(tokens[0].tolist()), sot_index=sot_index, sample_len=sample_len, eot=tokenizer.eot,
            no_speech=tokenizer.no_speech, suppress_ids=suppress_ids, blank_ids=blank_ids,
            timestamp_rules=timestamp_rules,
        )
        sum_logprobs[0], no_speech_probs = total, [no_speech]
    elif isinstance(inference, KernelInference) and beam is None and options.temperature == 0 and len(tokens) == 1:
        picker = cpu_kernels.GreedyPicker(model.dims.n_vocab, tokenizer.eot, suppress_ids, blank_ids, timestamp_rules)
        tokens, sum_logprobs[0], no_speech = _picked_greedy(inference, picker, tokens, sot_index, sample_len, n_ctx,
                                                            tokenizer.eot, tokenizer.no_speech)
        no_speech_probs = [no_speech]
    else:
        for i in range(sample_len):
            if i == 0:
                both = inference.logits(tokens, rows=(sot_index, -1))
                at_sot = np.exp(log_softmax(both[:, 0]))
                no_speech_probs = at_sot[:, tokenizer.no_speech].tolist()
                logits = both[:, -1].copy()
            else:
                logits = inference.logits(tokens)[:, -1].copy()
            for apply in filters:
                apply(logits, tokens)
            if beam is not None:
                tokens, completed = beam.update(tokens, logits, sum_logprobs)
            else:
                tokens, completed = greedy_update(tokens, logits, sum_logprobs, options.temperature, tokenizer.eot)
            if completed or tokens.shape[-1] > n_ctx:
                break

    no_speech_probs = no_speech_probs[::n_group]
    tokens = tokens.reshape(n_audio, n_group, -1)
    sum_logprobs = sum_logprobs.reshape(n_audio, n_group)
    if beam is not None:
        seqs, lps = beam.finalize(tokens, sum_logprobs)
    else:
        seqs = [[np.append(t, tokenizer.eot) for t in s] for s in tokens]
        lps = [list(s) for s in sum_logprobs]
    seqs = [[t[sample_begin : int(np.nonzero(t == tokenizer.eot)[0][0])] for t in s] for s in seqs]
    selected = rank(seqs, lps, options.length_penalty)
    chosen = [s[i].tolist() for i, s in zip(selected, seqs)]
    texts = [tokenizer.decode(t).strip() for t in chosen]
    chosen_lps = [lp[i] for i, lp in zip(selected, lps)]
    return [
        DecodingResult(
            audio_features=audio_features[i],
            language=languages[i],
            language_probs=language_probs[i] if language_probs else None,
            tokens=chosen[i],
            text=texts[i],
            avg_logprob=float(chosen_lps[i] / (len(chosen[i]) + 1)),
            no_speech_prob=float(no_speech_probs[i]),
            temperature=options.temperature,
            compression_ratio=compression_ratio(texts[i]),
        )
        for i in range(n_audio)
    ]
