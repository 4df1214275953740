"""On the GPU machine: build the model directories tests/conftest.py expects from the carried
OpenAI .pt checkpoints (the device has no CTranslate2 packages), with the manifests' alignment heads:
`python3 scripts/device/prepare_models.py [FAMILY ...]` (default: tiny.en and base)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from conftest import CACHE, model_dir_path, openai_pt_path, variant_name  # noqa: E402
from zoo.convert import convert  # noqa: E402
from zoo.manifest import find_family  # noqa: E402
from zoo.sources import pt  # noqa: E402

VARIANTS = {"tiny.en": [("float32", None), ("float16", None), ("float16", 4), ("float16", 8)],
            "base": [("float32", None), ("float16", None)]}


def main(families: list[str]) -> None:
    for family_name in families or VARIANTS:
        variants = VARIANTS[family_name]
        carried, pt_path = CACHE / "models" / f"{family_name}.pt", openai_pt_path(family_name)
        if carried.is_file():  # unpack.sh puts it here; conftest finds it under its converter-code key
            os.replace(carried, pt_path)
        ckpt = pt.load(pt_path)
        ckpt.alignment_heads = find_family(family_name).alignment_heads
        for dtype, q_bits in variants:
            out = model_dir_path(family_name, dtype, q_bits)
            if not (out / "config.json").is_file():
                convert(ckpt, out, dtype=dtype, q_bits=q_bits, name=variant_name(family_name, dtype, q_bits))
            print("built", out)


if __name__ == "__main__":
    main(sys.argv[1:])
