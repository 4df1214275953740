"""Two threads sharing one loaded model get the results each would get alone (calls on a shared
model are serialized by transcribe's per-model lock)."""

from __future__ import annotations

import threading

import whisper_mlx


def test_threads_sharing_a_model_match_sequential_results(tiny_en_fp32_dir, clips):
    model = whisper_mlx.load_model(tiny_en_fp32_dir)
    paths = [str(clips["en_train"].path), str(clips["en_river"].path)]
    alone = [whisper_mlx.transcribe(p, model=model, temperature=0.0, word_timestamps=True) for p in paths]

    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = whisper_mlx.transcribe(paths[i], model=model, temperature=0.0, word_timestamps=True)
        except BaseException as e:  # surfaced below: a thread's exception must fail the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, expected in enumerate(alone):
        assert results[i]["text"] == expected["text"]
        assert results[i]["segments"] == expected["segments"]
