#!/usr/bin/env bash
# On nvidia-h200-x2 after unpack.sh: when do a corpus pass's first rows appear with 1 and with 2
# GPU workers? A small corpus (64 short clips), base fp16, batch 16; the table, each pass's row
# arrivals (JSON) and each Ray session's logs (Ray Data's, the workers') under $OUT.
set -euo pipefail
. /tmp/env.sh
M=$(ls -d $WHISPER_MLX_TEST_CACHE/models/base-fp16-*)
python3 -m benchmarks.corpus_throughput --device gpu --model "$M" --cache "$WHISPER_MLX_TEST_CACHE" \
  --files 64 --long 0 --workers 1 2 --cpus 16 --rounds 1 --batch-size 16 --no-in-process \
  --out "$OUT/corpus-startup" --note "nvidia-h200-x2; base fp16; startup probe" | tail -8
for s in /tmp/ray/session_2*; do
  d="$OUT/ray/$(basename "$s")"; mkdir -p "$d"
  cp "$s"/logs/ray-data*.log "$d"/ 2>/dev/null || true
  for f in "$s"/logs/worker-*.err "$s"/logs/worker-*.out; do
    [ -s "$f" ] && tail -c 20000 "$f" > "$d/$(basename "$f")"
  done
done
ls -R "$OUT/ray" | head -40
