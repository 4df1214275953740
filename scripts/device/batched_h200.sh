#!/usr/bin/env bash
# On the GPU machine after unpack.sh (all parts): issue 14's H200 table, as run for
# benchmarks/batched-h200-2026-11-30.md. The large-v3 / large-v3-turbo shapes (random fp16
# weights, 100 tokens per window), then real tiny.en and base fp16 end to end from the carried clips
# (the English parity clips and the bench clip, twice), at batch 1/8/16/32. JSON under $OUT.
set -euo pipefail
. /tmp/env.sh
M=$WHISPER_MLX_TEST_CACHE/models
C=$WHISPER_MLX_TEST_CACHE/clips
python3 -m benchmarks.batched_throughput --device gpu --shapes large-v3 large-v3-turbo --batch 1 8 16 32 \
  --repeats 3 --json "$OUT/shapes-h200.json"
python3 -m benchmarks.batched_throughput --device gpu --models $(ls -d $M/tiny.en-fp16-*) $(ls -d $M/base-fp16-*) \
  --clips $(ls $C/en_*.wav $C/bench_long-*.wav) --repeat 2 --batch 1 8 16 32 --json "$OUT/real-h200.json"
