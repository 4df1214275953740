#!/usr/bin/env bash
# On the GPU machine, once per carried part: `scripts/device/unpack.sh K N` keeps part K of N in
# /tmp (which lasts while the machine stays warm); after the last part it installs everything
# into /tmp/site and writes /tmp/env.sh (source it before running tests or benchmarks).
set -euo pipefail
k=$1 n=$2
mkdir -p /tmp/parts
cp ".device/p$k/part" "/tmp/parts/$k"
have=$(ls /tmp/parts | wc -l)
if [ "$have" -lt "$n" ]; then echo "part $k of $n kept ($have here)"; exit 0; fi
[ -f /tmp/env.sh ] && { echo "already unpacked"; exit 0; }

rm -rf /tmp/stage /tmp/site && mkdir -p /tmp/stage /tmp/site /tmp/blas
for i in $(seq 1 "$n"); do cat "/tmp/parts/$i"; done | tar -xf - -C /tmp/stage
xz -dc /tmp/stage/mlxcuda.tar.xz | tar -xf - -C /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/stage/whl/*.whl
tar -xJf /tmp/stage/blas.tar.xz -C /tmp/blas

# MLX's rpath looks for the NVIDIA libraries beside it; the device's PyTorch has them.
nv=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])')
ln -sfn "$nv" /tmp/site/nvidia
cuda=$(ls -d /usr/local/cuda-13* /usr/local/cuda 2>/dev/null | head -1)
cccl=$(ls -d "$cuda"/targets/x86_64-linux/include/cccl "$cuda"/include/cccl 2>/dev/null | head -1)
ln -sfn "$cccl" /tmp/site/mlx/include/cccl

export WHISPER_MLX_TEST_CACHE=/tmp/tc
mkdir -p $WHISPER_MLX_TEST_CACHE/models $WHISPER_MLX_TEST_CACHE/clips
mv /tmp/stage/clips/*.wav $WHISPER_MLX_TEST_CACHE/clips/
mv /tmp/stage/models/*.pt $WHISPER_MLX_TEST_CACHE/models/
lib=/tmp/blas/usr/lib/x86_64-linux-gnu
cat > /tmp/env.sh <<ENV
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests
export LD_LIBRARY_PATH=$lib:\${LD_LIBRARY_PATH:-}
export WHISPER_MLX_BLAS=$lib/openblas-pthread/libopenblas.so.0
export WHISPER_MLX_TEST_CACHE=$WHISPER_MLX_TEST_CACHE
export CUDA_HOME=$cuda CUDA_PATH=$cuda
export PYTHONUNBUFFERED=1
ENV
rm -rf /tmp/stage /tmp/parts
. /tmp/env.sh
python3 -c 'import mlx.core as mx; print("mlx", mx.__version__, "gpu", mx.is_available(mx.gpu), mx.default_device())'
python3 scripts/device/prepare_models.py
