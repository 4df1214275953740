#!/usr/bin/env bash
# Probe, on nvidia-h200-x2 after unpack.sh: where the time before a corpus pass's first rows goes.
# 1. The kernel caches (MLX's PTX under /tmp/mlx, the driver's under ~/.nv) before and after.
# 2. One process's timeline, twice (startup_timeline.py): a second process shows what caches keep.
# 3. Corpus passes with 1 and 2 GPU workers on 64 short clips and 2 long files, every process
#    logging its start and the corpus calls (timeline/sitecustomize.py); the logs under $OUT.
set -uo pipefail
. /tmp/env.sh
M=$(ls -d $WHISPER_MLX_TEST_CACHE/models/base-fp16-*)
caches() { echo "$1: PTX files $(ls /tmp/mlx/*/ptx 2>/dev/null | wc -l), driver cache $(du -sh ~/.nv 2>/dev/null | cut -f1), CUDA_CACHE vars: $(env | grep ^CUDA_CACHE | tr '\n' ' ')"; }
caches before
for i in 1 2; do echo "== process $i"; python3 scripts/device/startup_timeline.py "$M" "$WHISPER_MLX_TEST_CACHE/clips"; caches "after process $i"; done
for w in 1 2; do
  export PROBE_LOG=$OUT/timeline-w$w.log
  PYTHONPATH=$PWD/scripts/device/timeline:$PYTHONPATH python3 -m benchmarks.corpus_throughput --device gpu \
    --model "$M" --cache "$WHISPER_MLX_TEST_CACHE" --files 64 --long 2 --workers $w --cpus 16 --rounds 1 \
    --batch-size 16 --no-in-process --out "$OUT/corpus-startup-w$w" | grep '^| whisper'
  unset PROBE_LOG
  python3 - "$OUT/timeline-w$w.log" <<'PY'
import sys
lines = [l.split(" ", 2) for l in open(sys.argv[1])]
t0 = float(lines[0][0])
for t, pid, event in lines:
    print(f"{float(t) - t0:8.2f} {pid:>7} {event.strip()[:110]}")
PY
done
python3 -c "import json; [print(w, json.load(open(f'$OUT/corpus-startup-w{w}.json'))['per_round_audio_h_per_h'][0]['first_rows_s']) for w in (1, 2)]"
