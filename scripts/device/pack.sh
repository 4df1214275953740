#!/usr/bin/env bash
# Pack what the GPU machine lacks into parts small enough to carry one per `run` call.
# Here (python 3.11, internet to PyPI): wheels for cp312, MLX's CUDA build without its bundled
# CCCL headers (the device's CUDA 13 has them), Debian's OpenBLAS (fast CPU fp32 references),
# the test clips and the OpenAI-format .pt checkpoints that tests/conftest.py builds.
# Output: .device/p1 .. .device/pN, each one file under PART_MB (MiB; with the working tree a
# call carries at most 64 MiB); unpack.sh reassembles them and installs each member as soon as
# the parts so far hold it.
set -euo pipefail
cd "$(dirname "$0")/../.."
PART_MB=${PART_MB:-58}
D=.device
PY=.venv/bin/python
rm -rf "$D/stage" "$D"/p[0-9]*
mkdir -p "$D/whl" "$D/stage/whl" "$D/stage/models" "$D/stage/clips"

plat=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d "$D/whl" mlx==0.32.4 mlx-cuda-13==0.32.4 av==18.1.0 pydantic==2.14.4 pydantic_core==2.50.5 \
    annotated-types typing-inspection more-itertools==11.2.1
$PY -m pip download -q --no-deps -d "$D/whl" openai-whisper==20250625
[ -f "$D"/whl/openai_whisper-20250625-py3-none-any.whl ] || \
  $PY -m pip wheel -q --no-deps --no-build-isolation -w "$D/whl" "$D"/whl/openai_whisper-20250625.tar.gz

# MLX (CUDA): unpacked, minus include/cccl (9 MB; the device's CUDA toolkit provides CCCL).
if [ ! -s "$D/mlxcuda.tar.xz" ]; then
  rm -rf "$D/mlxcuda" && mkdir -p "$D/mlxcuda"
  (cd "$D/mlxcuda" && unzip -q ../whl/mlx_cuda_13-0.32.4-*.whl && unzip -q -o ../whl/mlx-0.32.4-cp312-*.whl \
     && rm -rf mlx/include/cccl)
  tar -C "$D/mlxcuda" -cf - . | xz -9 > "$D/mlxcuda.tar.xz.tmp" && mv "$D/mlxcuda.tar.xz.tmp" "$D/mlxcuda.tar.xz"
fi
cp "$D/mlxcuda.tar.xz" "$D/stage/"
cp "$D"/whl/av-*.whl "$D"/whl/pydantic*.whl "$D"/whl/annotated_types-*.whl "$D"/whl/typing_inspection-*.whl \
   "$D"/whl/more_itertools-*.whl "$D"/whl/openai_whisper-*.whl "$D/stage/whl/"

# OpenBLAS with its Fortran runtime: MLX's CPU backend otherwise uses reference BLAS.
blas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so
tar -cJhf "$D/stage/blas.tar.xz" -C / "${blas#/}" usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
    usr/lib/x86_64-linux-gnu/libgfortran.so.5 usr/lib/x86_64-linux-gnu/libquadmath.so.0

# Clips and checkpoints, built by the same code the tests use.
$PY - <<'PY'
import shutil, sys; sys.path.insert(0, "tests")
from conftest import CACHE, _openai_pt
from zoo.speech import load_specs, make_clips
make_clips(CACHE / "clips", [i for i, s in load_specs().items() if s.split != "bench"])
for family in ("tiny.en", "base"):  # cached under a converter-code key; carried as FAMILY.pt
    shutil.copy(_openai_pt(family), f".device/stage/models/{family}.pt")
PY
cp .cache/tests/clips/*.wav "$D/stage/clips/"
# the 3.4 min bench clip for the corpus and batched benchmarks (benchmarks.cpu builds it)
$PY -c "from benchmarks.cpu import prepare_clip; prepare_clip('bench_long')" >/dev/null 2>&1 || true
cp .cache/bench/clips/bench_long-*.wav "$D/stage/clips/" 2>/dev/null || true

# Ray (whisper_mlx.ray, the corpus benchmark on two GPUs) and what the device image lacks of its deps
ray=$(.venv/bin/pip show ray 2>/dev/null | sed -n 's/^Version: //p')
mkdir -p "$D/stage/ray"
if [ -n "$ray" ]; then
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
      -d "$D/stage/ray" "ray==$ray" jsonschema jsonschema-specifications referencing rpds-py
fi

# One stream of single members, in the order they become useful on the device: MLX (parts 1-2),
# the wheels (then whisper_mlx imports and the random-weight benchmarks run, PyTorch side too),
# OpenBLAS and the clips, tiny.en, base.
(cd "$D/stage" && tar -cf whl.tar -C whl . && tar -cf clips.tar -C clips . \
   && tar -cf ray.tar -C ray . \
   && tar -cf - mlxcuda.tar.xz whl.tar blas.tar.xz clips.tar models/tiny.en.pt models/base.pt ray.tar) \
  | split -b "${PART_MB}m" -d -a 1 - "$D/part"
i=1
for f in "$D"/part[0-9]; do mkdir -p "$D/p$i" && mv "$f" "$D/p$i/part"; i=$((i + 1)); done
rm -rf "$D/stage"
ls -la "$D"/p*/part
