#!/usr/bin/env bash
# On the GPU machine, once per carried part: `scripts/device/unpack.sh K N` keeps part K of N in
# /tmp (which lasts while the machine stays warm). As soon as the parts so far hold MLX (the first
# member of pack.sh's stream; parts 1-2) it installs MLX into /tmp/site and writes /tmp/env-mlx.sh
# (MLX alone: whisper_mlx imports av and the probes' zoo.manifest needs pydantic, so the probes and
# tools/bench_gpu.py wait for /tmp/env.sh); after the last part it installs everything
# else and writes /tmp/env.sh (source it before running tests or benchmarks). Carry
# .cache/tests/references (git-ignored, so it travels only when carried) with the last part: without
# the CPU fp32 references there, tests/test_gpu.py recomputes them on the device's CPU, and base's
# does not fit one call.
set -euo pipefail
k=$1 n=$2
mkdir -p /tmp/parts
cp ".device/p$k/part" "/tmp/parts/$k"
have=$(ls /tmp/parts | wc -l)
[ -f /tmp/env.sh ] && { echo "already unpacked"; exit 0; }
cuda=$(ls -d /usr/local/cuda-13* /usr/local/cuda 2>/dev/null | head -1)

if [ ! -f /tmp/env-mlx.sh ]; then
  # the parts 1..j present in order; a truncated stream still yields its complete first member
  j=0; while [ -f "/tmp/parts/$((j + 1))" ]; do j=$((j + 1)); done
  rm -rf /tmp/mstage && mkdir -p /tmp/mstage
  for i in $(seq 1 "$j"); do cat "/tmp/parts/$i"; done | tar -xf - -C /tmp/mstage mlxcuda.tar.xz 2>/dev/null || true
  if [ -f /tmp/mstage/mlxcuda.tar.xz ] && xz -t /tmp/mstage/mlxcuda.tar.xz 2>/dev/null; then
    rm -rf /tmp/site && mkdir -p /tmp/site
    xz -dc /tmp/mstage/mlxcuda.tar.xz | tar -xf - -C /tmp/site
    # MLX's rpath looks for the NVIDIA libraries beside it; the device's PyTorch has them.
    nv=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])')
    ln -sfn "$nv" /tmp/site/nvidia
    cccl=$(ls -d "$cuda"/targets/x86_64-linux/include/cccl "$cuda"/include/cccl 2>/dev/null | head -1)
    ln -sfn "$cccl" /tmp/site/mlx/include/cccl
    cat > /tmp/env-mlx.sh <<ENV
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests
export CUDA_HOME=$cuda CUDA_PATH=$cuda
export PYTHONUNBUFFERED=1
ENV
    . /tmp/env-mlx.sh
    python3 -c 'import mlx.core as mx; print("mlx", mx.__version__, "gpu", mx.is_available(mx.gpu), mx.default_device())'
  fi
  rm -rf /tmp/mstage
fi
if [ "$have" -lt "$n" ]; then echo "part $k of $n kept ($have here)"; exit 0; fi

rm -rf /tmp/stage && mkdir -p /tmp/stage /tmp/blas
for i in $(seq 1 "$n"); do cat "/tmp/parts/$i"; done | tar -xf - -C /tmp/stage --exclude=mlxcuda.tar.xz
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/stage/whl/*.whl
tar -xJf /tmp/stage/blas.tar.xz -C /tmp/blas

export WHISPER_MLX_TEST_CACHE=/tmp/tc
mkdir -p $WHISPER_MLX_TEST_CACHE/models $WHISPER_MLX_TEST_CACHE/clips $WHISPER_MLX_TEST_CACHE/references
mv /tmp/stage/clips/*.wav $WHISPER_MLX_TEST_CACHE/clips/
mv /tmp/stage/models/*.pt $WHISPER_MLX_TEST_CACHE/models/
[ -d .cache/tests/references ] && cp .cache/tests/references/*.json $WHISPER_MLX_TEST_CACHE/references/
lib=/tmp/blas/usr/lib/x86_64-linux-gnu
cat > /tmp/env.sh <<ENV
. /tmp/env-mlx.sh
export LD_LIBRARY_PATH=$lib:\${LD_LIBRARY_PATH:-}
export WHISPER_MLX_BLAS=$lib/openblas-pthread/libopenblas.so.0
export WHISPER_MLX_TEST_CACHE=$WHISPER_MLX_TEST_CACHE
ENV
rm -rf /tmp/stage /tmp/parts
. /tmp/env.sh
python3 scripts/device/prepare_models.py
