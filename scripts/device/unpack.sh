#!/usr/bin/env bash
# On the GPU machine, once per carried part: `scripts/device/unpack.sh K N` appends part K of N
# (.device/pK/part, from pack.sh) to the stream kept in /tmp (which lasts while the machine stays
# warm) and installs whatever the stream now holds complete, in pack.sh's order:
#   MLX (CUDA)            -> /tmp/site, /tmp/env.sh written (PYTHONPATH, CUDA_HOME)
#   whl.tar (av, pydantic, openai-whisper, ...) -> /tmp/site: whisper_mlx, zoo.manifest and the
#                            PyTorch side of `python -m tools.bench_gpu` import; random-weight benchmarks run
#   OpenBLAS, clips.tar   -> /tmp/blas, $WHISPER_MLX_TEST_CACHE/clips
#   tiny.en.pt, base.pt   -> the model directories tests/conftest.py expects (prepare_models.py)
#   ray.tar (Ray and the deps the image lacks) -> /tmp/site
# `. /tmp/env.sh` before running anything. Carry .cache/tests/references (git-ignored, so it
# travels only when carried; scripts/device/cpu_references.py builds it) with a part: without the
# CPU fp32 references, tests/test_gpu.py recomputes them on the device's CPU, which does not fit a call.
set -euo pipefail
k=$1 n=$2
mkdir -p /tmp/parts
[ -f "/tmp/parts/$k" ] || cp ".device/p$k/part" "/tmp/parts/$k"
cuda=$(ls -d /usr/local/cuda-13* /usr/local/cuda 2>/dev/null | head -1 || true)
export WHISPER_MLX_TEST_CACHE=/tmp/tc
mkdir -p /tmp/stage /tmp/done $WHISPER_MLX_TEST_CACHE/models $WHISPER_MLX_TEST_CACHE/clips \
  $WHISPER_MLX_TEST_CACHE/references

# the members of the parts 1..j present in order that are complete, extracted once each
python3 - "$n" <<'PY'
import io, os, sys, tarfile
n = int(sys.argv[1])
parts = []
while len(parts) < n and os.path.exists(f"/tmp/parts/{len(parts) + 1}"):
    parts.append(f"/tmp/parts/{len(parts) + 1}")
data = b"".join(open(p, "rb").read() for p in parts)
with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
    try:
        for m in tar:
            if m.offset_data + m.size > len(data):
                break
            if m.isfile() and not os.path.exists(f"/tmp/done/{m.name.replace('/', '_')}"):
                tar.extract(m, "/tmp/stage", filter="data")
                open(f"/tmp/done/{m.name.replace('/', '_')}", "w").close()
                print("unpacked", m.name, m.size, flush=True)
    except (tarfile.ReadError, EOFError):
        pass
PY

if [ -f /tmp/stage/mlxcuda.tar.xz ] && [ ! -f /tmp/env.sh ]; then
  mkdir -p /tmp/site
  xz -dc /tmp/stage/mlxcuda.tar.xz | tar -xf - -C /tmp/site
  rm /tmp/stage/mlxcuda.tar.xz
  # MLX's rpath looks for the NVIDIA libraries beside it; the device's PyTorch has them.
  nv=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])')
  ln -sfn "$nv" /tmp/site/nvidia
  cccl=$(ls -d "$cuda"/targets/x86_64-linux/include/cccl "$cuda"/include/cccl 2>/dev/null | head -1 || true)
  ln -sfn "$cccl" /tmp/site/mlx/include/cccl
  cat > /tmp/env.sh <<ENV
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests
export CUDA_HOME=$cuda CUDA_PATH=$cuda
export PYTHONUNBUFFERED=1
export WHISPER_MLX_TEST_CACHE=$WHISPER_MLX_TEST_CACHE
ENV
  . /tmp/env.sh
  python3 -c 'import mlx.core as mx; print("mlx", mx.__version__, "gpu", mx.is_available(mx.gpu), mx.default_device())'
fi
if [ ! -f /tmp/env.sh ]; then echo "part $k of $n kept: MLX not complete yet"; exit 0; fi
. /tmp/env.sh
if [ -f /tmp/stage/whl.tar ]; then
  mkdir -p /tmp/whl && tar -xf /tmp/stage/whl.tar -C /tmp/whl && rm /tmp/stage/whl.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/whl/*.whl
  echo "wheels installed"
fi
if [ -f /tmp/stage/blas.tar.xz ]; then
  mkdir -p /tmp/blas && tar -xJf /tmp/stage/blas.tar.xz -C /tmp/blas && rm /tmp/stage/blas.tar.xz
  lib=/tmp/blas/usr/lib/x86_64-linux-gnu
  cat >> /tmp/env.sh <<ENV
export LD_LIBRARY_PATH=$lib:\${LD_LIBRARY_PATH:-}
export WHISPER_MLX_BLAS=$lib/openblas-pthread/libopenblas.so.0
ENV
  . /tmp/env.sh
fi
if [ -f /tmp/stage/clips.tar ]; then
  tar -xf /tmp/stage/clips.tar -C $WHISPER_MLX_TEST_CACHE/clips && rm /tmp/stage/clips.tar
fi
[ -d .cache/tests/references ] && cp .cache/tests/references/*.json $WHISPER_MLX_TEST_CACHE/references/
for family in tiny.en base; do
  if [ -f "/tmp/stage/models/$family.pt" ]; then
    mv "/tmp/stage/models/$family.pt" $WHISPER_MLX_TEST_CACHE/models/
    python3 scripts/device/prepare_models.py "$family"
  fi
done
if [ -f /tmp/stage/ray.tar ]; then
  mkdir -p /tmp/raywhl && tar -xf /tmp/stage/ray.tar -C /tmp/raywhl && rm /tmp/stage/ray.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/raywhl/*.whl
  echo "ray installed"
fi
echo "part $k of $n: $(ls /tmp/parts | wc -l) parts here"
