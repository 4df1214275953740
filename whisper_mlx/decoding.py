"""Decode 30 s windows: options, the decoding loops (greedy, sampling, beam search), language id.

The loops are written once, over B rows, and drive the model's decoding backend
(`whisper_mlx.backends`) through its narrow interface: encode windows, open a session over their
audio features, prefill the prompts, pick tokens under the logit filters (one `LogitRules`
description), feed tokens, reorder rows. Which backend runs (MLX graph, C kernels, CUDA) is
decided once, when the model is loaded.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Sequence

import mlx.core as mx
import numpy as np

from .audio import CHUNK_LENGTH
from .backends import Session, backend_for
from .logit_rules import LogitRules, log_softmax
from .model import Whisper
from .tokenizer import Tokenizer, get_tokenizer

_rng = np.random.default_rng()


def compression_ratio(text: str) -> float:
    """How well the text gzips: high values flag repetitive (looping) output."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


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


# ---- the decoding loops (over a Session's rows) --------------------------------------------


def sample(session: Session, rules: LogitRules, tokens: np.ndarray, temperature: float, sample_len: int,
           n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampling at a temperature from the filtered distribution, every row to end-of-text (rows
    that finished keep end-of-text); returns the sampled tokens (rows, n) and log-probability sums."""
    eot = rules.eot
    rows = tokens.shape[0]
    sums = np.zeros(rows, np.float64)
    start = tokens.shape[1]
    for i in range(sample_len):
        logits = session.filtered_logits(rules, rules.state(tokens))
        logprobs = log_softmax(logits)
        probs = np.exp(log_softmax(logits / temperature).astype(np.float64))
        probs /= probs.sum(axis=-1, keepdims=True)
        picked = np.array([_rng.choice(probs.shape[-1], p=p) for p in probs])
        done = tokens[:, -1] == eot
        sums += logprobs[np.arange(rows), picked] * ~done
        picked[done] = eot
        tokens = np.concatenate([tokens, picked[:, None]], axis=1)
        if (picked == eot).all() or tokens.shape[1] > n_ctx or i + 1 == sample_len:
            break
        session.feed(picked)
    return tokens[:, start:], sums


def _duplicate_rows(tokens: np.ndarray, beam_size: int) -> np.ndarray:
    """(rows,) True where a row repeats an earlier row of the same window: its continuations
    are the same sequences as that row's (openai-whisper's candidate dict keeps one of each)."""
    rows = tokens.shape[0]
    dup = np.zeros(rows, bool)
    for start in range(0, rows, beam_size):
        group = tokens[start : start + beam_size]
        _, first = np.unique(group, axis=0, return_index=True)
        mask = np.ones(len(group), bool)
        mask[first] = False
        dup[start : start + beam_size] = mask
    return dup


def beam_search(session: Session, rules: LogitRules, tokens: np.ndarray, beam_size: int, patience: float | None,
                sample_len: int, n_ctx: int) -> tuple[list[list[np.ndarray]], list[list[float]]]:
    """openai-whisper's beam search with patience, over all windows' beams at once: the top
    beam_size + 1 tokens of every row come from the backend's picker in one call, candidates are
    ranked per window with array operations. Returns per window the finished sequences (sampled
    tokens, without end-of-text) and their log-probability sums."""
    eot = rules.eot
    n_audio = tokens.shape[0] // beam_size
    k = beam_size + 1
    max_candidates = round(beam_size * (patience or 1.0))
    finished: list[dict[tuple, float]] = [{} for _ in range(n_audio)]
    sums = np.zeros(tokens.shape[0], np.float64)
    start = tokens.shape[1]
    for _ in range(sample_len):
        picked, logprobs = session.pick(rules, rules.state(tokens), k)
        scores = (sums[:, None] + logprobs).reshape(n_audio, beam_size * k)
        cand = picked.reshape(n_audio, beam_size * k)
        valid = ~np.repeat(_duplicate_rows(tokens, beam_size), k).reshape(n_audio, -1)
        # candidates in openai-whisper's insertion order (beam, then rank), best score first
        order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
        cand, scores, valid = (np.take_along_axis(a, order, axis=1) for a in (cand, scores, valid))
        is_eot = cand == eot
        kept = valid & ~is_eot
        rank_kept = np.cumsum(kept, axis=1)
        take = kept & (rank_kept <= beam_size)
        # eot candidates ranked before the last kept one finish
        last = np.argmax(rank_kept >= beam_size, axis=1)
        done = valid & is_eot & (np.arange(cand.shape[1])[None] < last[:, None])
        source = (order // k + np.arange(n_audio)[:, None] * beam_size)
        sources = source[take].reshape(n_audio, beam_size).ravel()
        new_tokens = cand[take].reshape(-1)
        new_sums = scores[take].reshape(-1)
        for i, j in zip(*np.nonzero(done)):
            if len(finished[i]) >= max_candidates:
                continue
            row = source[i, j]
            finished[i].setdefault(tuple(tokens[row, start:].tolist()), float(scores[i, j]))
        tokens = np.concatenate([tokens[sources], new_tokens[:, None]], axis=1)
        sums = new_sums
        session.reorder(sources)
        if all(len(f) >= max_candidates for f in finished) or tokens.shape[1] > n_ctx:
            break
        session.feed(new_tokens)
    # windows with too few finished sequences: their live beams, best first
    by_window = tokens[:, start:].reshape(n_audio, beam_size, -1)
    sums = sums.reshape(n_audio, beam_size)
    for i, sequences in enumerate(finished):
        if len(sequences) < beam_size:
            for j in np.argsort(sums[i])[::-1]:
                sequences.setdefault(tuple(by_window[i, j].tolist()), float(sums[i, j]))
                if len(sequences) >= beam_size:
                    break
    return ([[np.array(s, np.int64) for s in f] for f in finished], [list(f.values()) for f in finished])


def rank(tokens: list[list[np.ndarray]], sum_logprobs: list[list[float]], length_penalty: float | None):
    """Index of the best sequence per audio: log probability over (penalized) length."""

    def score(logprob: float, length: int) -> float:
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return logprob / penalty

    return [
        int(np.argmax([score(lp, len(t)) for lp, t in zip(lps, ts)])) for ts, lps in zip(tokens, sum_logprobs)
    ]


# ---- the task --------------------------------------------------------------------------------


def embed_audio(model: Whisper, mel: mx.array) -> mx.array:
    """The encoder pass over (batch, n_frames, n_mels) log-mel, through the model's backend.
    `decode` and `detect_language` accept its output in place of the mel."""
    return backend_for(model).encode(mel)


def _features(model: Whisper, mel: mx.array) -> mx.array:
    if mel.shape[-2:] == (model.dims.n_audio_ctx, model.dims.n_audio_state):
        return mel
    return embed_audio(model, mel)


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
    features = _features(model, mel)
    n_audio = features.shape[0]
    session = backend_for(model).session(features, n_audio)
    logprobs = session.prefill(np.array([[tokenizer.sot]] * n_audio), 0)
    lang_ids = np.array(tokenizer.all_language_tokens)
    masked = np.full_like(logprobs, -np.inf)
    masked[:, lang_ids] = logprobs[:, lang_ids]
    language_tokens = masked.argmax(axis=-1)
    probs = np.exp(log_softmax(masked))
    language_probs = [
        {code: float(probs[i, t]) for t, code in zip(tokenizer.all_language_tokens, tokenizer.all_language_codes)}
        for i in range(n_audio)
    ]
    if single:
        return int(language_tokens[0]), language_probs[0]
    return language_tokens, language_probs


def _verify(options: DecodingOptions) -> None:
    if options.beam_size is not None and options.best_of is not None:
        raise ValueError("beam_size and best_of can't be given together")
    if options.temperature == 0 and options.best_of is not None:
        raise ValueError("best_of with greedy sampling (T=0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise ValueError("patience requires beam_size to be given")
    if options.length_penalty is not None and not 0 <= options.length_penalty <= 1:
        raise ValueError("length_penalty (alpha) should be a value between 0 and 1")


TASKS = ("transcribe", "translate", "lang_id")


def check_options(options: DecodingOptions, multilingual: bool, num_languages: int | None = None) -> None:
    """Refuse a task or language the model cannot do, in one line: the task must be one of TASKS;
    the language a code or name the tokenizer knows (within the model's first `num_languages`
    when given); an English-only model transcribes English only (no other language, no
    translation, no language identification)."""
    from .tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    if options.task not in TASKS:
        raise ValueError(f"task {options.task!r} is not one of {', '.join(TASKS)}")
    language = options.language
    if language is not None:
        code = language.lower() if isinstance(language, str) else None
        code = code if code in LANGUAGES else TO_LANGUAGE_CODE.get(code or "")
        if code is None:
            raise ValueError(f"language {language!r} is not a language code or name Whisper knows")
        if not multilingual and code != "en":
            raise ValueError(f"language {language!r}: this model is English-only")
        if multilingual and num_languages is not None and code not in list(LANGUAGES)[:num_languages]:
            raise ValueError(f"language {language!r}: this model knows only the first {num_languages} languages")
    if not multilingual and options.task != "transcribe":
        raise ValueError(f"task {options.task!r}: this model is English-only and can only transcribe")


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


def logit_rules(tokenizer: Tokenizer, options: DecodingOptions, sample_begin: int, n_vocab: int,
                n_audio_ctx: int) -> LogitRules:
    """The window's logit filters from the options (openai-whisper's SuppressBlank,
    SuppressTokens and ApplyTimestampRules)."""
    max_index = None
    if not options.without_timestamps and options.max_initial_timestamp:
        precision = CHUNK_LENGTH / n_audio_ctx
        max_index = round(options.max_initial_timestamp / precision)
    return LogitRules(
        n_vocab=n_vocab,
        eot=tokenizer.eot,
        sample_begin=sample_begin,
        suppress=_suppressed(tokenizer, options.suppress_tokens) if options.suppress_tokens else (),
        blank=tuple(tokenizer.encode(" ") + [tokenizer.eot]) if options.suppress_blank else (),
        timestamps=not options.without_timestamps,
        timestamp_begin=tokenizer.timestamp_begin,
        no_timestamps=tokenizer.no_timestamps,
        max_initial_timestamp=max_index,
    )


def decode(model: Whisper, mel: mx.array, options: DecodingOptions = DecodingOptions(), **kwargs):
    """Decode 30 s window(s) of log-mel (n_frames, n_mels) or (batch, n_frames, n_mels), or their
    audio features; returns a DecodingResult, or a list of them for batched input."""
    if kwargs:
        options = replace(options, **kwargs)
    _verify(options)
    check_options(options, model.is_multilingual, model.num_languages)
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

    audio_features = _features(model, mel)
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

    rules = logit_rules(tokenizer, options, sample_begin, model.dims.n_vocab, model.dims.n_audio_ctx)
    tokens = np.repeat(tokens, n_group, axis=0)
    session = backend_for(model).session(audio_features, n_audio * n_group)
    at_sot = session.prefill(tokens, sot_index)
    no_speech_probs = np.exp(at_sot[:, tokenizer.no_speech])[::n_group]

    eot = tokenizer.eot
    if options.beam_size:
        seqs, lps = beam_search(session, rules, tokens, options.beam_size, options.patience, sample_len, n_ctx)
    else:
        if options.temperature == 0:
            sampled, sums = session.greedy(rules, tokens, sample_len, n_ctx)
        else:
            sampled, sums = sample(session, rules, tokens, options.temperature, sample_len, n_ctx)
        sampled = np.concatenate([sampled, np.full((len(sampled), 1), eot)], axis=1)
        ends = (sampled == eot).argmax(axis=1)
        seqs = [[sampled[i * n_group + j, : ends[i * n_group + j]] for j in range(n_group)] for i in range(n_audio)]
        lps = [list(sums[i * n_group : (i + 1) * n_group]) for i in range(n_audio)]
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
