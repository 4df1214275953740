"""Benchmarks (not a release step): speed, memory and accuracy measured side by side, and the
committed result tables beside this package.

- `core`: the result row (`Row`), the timer (`interleave`: interleaved repeats, fastest or median),
  peak memory and provenance (machine, versions, git commit).
- `cpu`: whisper_mlx beside faster-whisper, openai-whisper and mlx-whisper, a fresh process per
  repeat (`python -m tools.bench`).
- `check`: the CI speed check against `baseline.json` (`python -m tools.bench --check`).
- `gpu`: whisper_mlx's CUDA backend beside openai-whisper on PyTorch CUDA, fp16, in one process
  (`python -m tools.bench_gpu`); its random-weight models and the one table of shapes (every
  family's manifest dims) that `batched_throughput` uses too.
- `server_load`, `busy_step`, `batched_throughput`, `corpus_throughput`, `batched_memory`,
  `many_files`: the server under load, the C step beside a busy process, batched throughput at
  batch 1-32, `whisper-mlx corpus` on Ray beside the batched transcribe in one process, peak memory
  of the batched transcribe on a 1-hour file, many short files at once against one by one (each
  `python -m benchmarks.NAME`).
"""
