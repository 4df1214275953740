#!/usr/bin/env bash
# On nvidia-h200-x2 after unpack.sh (all parts): issue 16's 1 GPU against 2 GPUs, one pass per call
# (the one-GPU pass of this corpus takes about 8 min; two passes do not fit one call):
#   scripts/device/corpus_h200x2.sh 2     then, on the same warm machine,     scripts/device/corpus_h200x2.sh 1 warm
# base fp16, batch 16, tasks cut by audio duration (the command's default); 1920 short clips and
# 120 copies of the 3.4 min clip (10.8 h). JSON and table under $OUT/corpus-h200x2-wN.
# MLX compiles its CUDA kernels (NVRTC) on first use and caches them under /tmp/mlx/<version>/ptx:
# the first pass on a fresh machine pays that compile (about 80 s), later ones do not. Unless told
# the machine is warm, a small untimed pass (16 short clips, one long) fills the cache first, so
# every timed pass starts warm.
set -euo pipefail
. /tmp/env.sh
workers=$1 warm=${2:-}
M=$(ls -d $WHISPER_MLX_TEST_CACHE/models/base-fp16-*)
if [ "$warm" != warm ]; then
  echo "compiled kernels cached before the warm-up: $(ls /tmp/mlx/*/ptx 2>/dev/null | wc -l)"
  python3 -m benchmarks.corpus_throughput --device gpu --model "$M" --cache "$WHISPER_MLX_TEST_CACHE" \
    --files 16 --long 1 --workers 1 --cpus 16 --rounds 1 --batch-size 16 --no-in-process | grep '^| whisper-mlx'
fi
echo "compiled kernels cached: $(ls /tmp/mlx/*/ptx 2>/dev/null | wc -l)"
python3 -m benchmarks.corpus_throughput --device gpu --model "$M" --cache "$WHISPER_MLX_TEST_CACHE" \
  --files 1920 --long 120 --workers "$workers" --cpus 16 --rounds 1 --batch-size 16 --no-in-process \
  --out "$OUT/corpus-h200x2-w$workers" --note "nvidia-h200-x2; base fp16; tasks by audio duration, one in flight per worker"
