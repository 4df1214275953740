#!/usr/bin/env bash
# On the GPU machine after unpack.sh (all parts): issue 14's H200 table. Real tiny.en and base
# (fp16, end to end from the carried clips) and the large-v3 / large-v3-turbo shapes (random
# weights, 100 tokens per window) at batch 1/8/16/32, then the large-v3 step against its bound.
# Results under $OUT (batched-h200.json, gpu-step.json).
set -euo pipefail
. /tmp/env.sh
M=$WHISPER_MLX_TEST_CACHE/models
tiny=$(ls -d $M/tiny.en-fp16* | grep -v -- '-q' | head -1)
base=$(ls -d $M/base-fp16* | head -1)
clips=$(ls $WHISPER_MLX_TEST_CACHE/clips/en_*.wav $WHISPER_MLX_TEST_CACHE/clips/bench_long-*.wav)
python3 -m benchmarks.batched_throughput --device gpu --models "$tiny" "$base" --clips $clips --repeat 2 \
  --shapes large-v3 large-v3-turbo --batch ${BATCHES:-1 8 16 32} --json "$OUT/batched-h200.json"
