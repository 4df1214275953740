"""Here, on a CPU machine: the CPU fp32 transcripts that tests/test_gpu.py compares the GPU with,
cached under $WHISPER_MLX_TEST_CACHE/references (tiny.en and base, the parity clips, word
timestamps, greedy and beam 5). Carry that folder to the GPU machine (`carry: [".cache/tests/references"]`, then
`cp .cache/tests/references/*.json /tmp/tc/references/` there, after unpack.sh): the GPU tests
then read the reference instead of spending their time limit recomputing it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import whisper_mlx  # noqa: E402,F401  (before mlx.core: picks the BLAS)
from conftest import CACHE  # noqa: E402
from test_gpu import BEAM, OPTIONS, _cpu_fp32, _model_dir, _reference_file  # noqa: E402
from zoo.speech import load_specs, make_clips  # noqa: E402


def main() -> None:
    ids = [i for i, spec in load_specs().items() if spec.split != "bench"]
    clips = make_clips(CACHE / "clips", ids)
    paths = [c.path for c in clips.values() if c.split == "parity"]
    for family in sys.argv[1:] or ["tiny.en", "base"]:
        for options in (OPTIONS, BEAM):
            t0 = time.perf_counter()
            _cpu_fp32(family, paths, options)
            path, key = _reference_file(family, _model_dir(family, "float32"), paths, options)
            print(f"{family}: {path} ({key[:12]}) in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
