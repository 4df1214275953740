#!/usr/bin/env bash
# Probe: the first LIMIT seconds of a corpus pass on the benchmark's corpus (SHORT short clips,
# LONG copies of the 3.4 min clip, as benchmarks.corpus_throughput links them), every process's
# start and corpus calls logged (timeline/sitecustomize.py), then each row file's time.
#   scripts/device/corpus_first_rows.sh WORKERS SHORT LONG LIMIT [DEVICE, default gpu] [CPUS, default 16]
set -uo pipefail
[ -f /tmp/env.sh ] && . /tmp/env.sh
workers=$1 short=$2 long=$3 limit=$4 device=${5:-gpu} cpus=${6:-16}
cache=${WHISPER_MLX_TEST_CACHE:-.cache/tests}
M=$(ls -d $cache/models/base-fp16-* 2>/dev/null | head -1); M=${M:-$cache/models/tiny.en-fp32}
in=$(mktemp -d) rows=$(mktemp -d) log=${OUT:-/tmp}/timeline-first-rows-w$workers.log
clips=($(for c in weather train garden library recipe meeting river phone; do ls $cache/clips/en_$c-*.wav; done))
for ((i = 0; i < short; i++)); do ln -s "$(realpath ${clips[i % 8]})" $in/short$(printf %05d $i).wav; done
for ((i = 0; i < long; i++)); do ln -s "$(realpath $(ls $cache/clips/bench_long-*.wav .cache/bench/clips/bench_long-*.wav 2>/dev/null | head -1))" $in/long$(printf %03d $i).wav; done
rm -f "$log"; echo "$(date +%s.%N | cut -c1-14) shell start" > "$log"
PROBE_LOG=$log PYTHONPATH=$PWD/scripts/device/timeline:${PYTHONPATH:-$PWD} timeout -s INT "$limit" \
  python3 -m whisper_mlx.cli corpus $in --output $rows --model "$M" --workers $workers --cpus $cpus \
  --batch-size 16 --device $device --beam-size None --vad-filter False 2>&1 | tail -2
for f in $rows/*; do [ -f "$f" ] && echo "$(stat -c %.3Y "$f") - row file $(basename "$f" | cut -c1-12)"; done >> "$log"
python3 - "$log" <<'PY'
import sys
lines = sorted((l.split(" ", 2) for l in open(sys.argv[1])), key=lambda x: float(x[0]))
t0 = float(lines[0][0])
for t, pid, event in lines:
    if "default_worker" not in event:
        print(f"{float(t) - t0:8.2f} {pid:>7} {event.strip()[:110]}")
PY
