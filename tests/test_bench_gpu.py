"""The GPU side-by-side benchmark (`benchmarks.gpu`, `python -m tools.bench_gpu`): its rows are the
core's, paired into the committed JSON's lines against hand-computed numbers; the one table of
shapes is the manifests'; a small random-weight run on the CPU records what the table shows; bad
input is one line. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import core, gpu

ROOT = Path(__file__).resolve().parents[1]


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.bench_gpu", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _rows() -> list[core.Row]:
    return [
        core.make_row("large-v3", gpu.ENCODER, "whisper_mlx@mlx:fp16", [0.009, 0.008], "median"),
        core.make_row("large-v3", gpu.ENCODER, gpu.TORCH, [0.012, 0.013, 0.011], "median"),
        core.make_row("large-v3", gpu.ENCODER, "whisper_mlx:fp16", [0.008, 0.007, 0.009], "median", note="e"),
        gpu.derived("large-v3", gpu.STEP, "whisper_mlx:fp16", 0.0015, note="s"),
        gpu.derived("large-v3", gpu.STEP, gpu.BOUND, 0.0005, note="b"),
    ]


def test_lines_pair_whisper_mlx_with_openai_whisper_and_the_bound():
    rows = _rows()
    lines = gpu.lines(rows)
    assert [(x["model"], x["what"], x["unit"], x["note"]) for x in lines] == [
        ("large-v3", gpu.ENCODER, "ms", "e"),
        ("large-v3", gpu.STEP, "ms", "s"),
        ("large-v3", "decoder step / bandwidth bound", "x", "b"),
    ]
    enc, step, bound = lines
    assert enc["mlx"] == pytest.approx(8.0) and enc["torch"] == pytest.approx(12.0)  # medians, in ms
    assert enc["speedup"] == pytest.approx(12.0 / 8.0)
    assert step["mlx"] == pytest.approx(1.5) and step["torch"] is None and step["speedup"] is None
    assert bound["mlx"] == pytest.approx(3.0) and bound["torch"] is None and bound["speedup"] is None
    # only the lines the given rows make, paired within all rows (what Report.add prints)
    assert gpu.lines(rows, rows[1:3]) == [enc]


def test_report_json_keeps_the_committed_keys():
    committed = json.loads((ROOT / "benchmarks" / "gpu-h200.json").read_text())
    run = committed["runs"][0]
    report = gpu.Report(device="gpu", rows=_rows(), facts={"mlx_copy_GBps": 3000})
    out = report.as_dict()
    assert set(run) - {"command"} <= set(out)
    assert all(list(line) == list(run["rows"][0]) for line in out["rows"])
    assert [m["entry"] for m in out["measurements"]] == [r.entry for r in _rows()]
    assert out["measurements"][1]["times"] == [0.012, 0.013, 0.011]
    md = gpu.table(report).splitlines()
    assert md[0].startswith("| model | measurement | whisper_mlx | openai-whisper (PyTorch) | speedup")
    assert len(md) == 2 + 3 and "1.50x" in md[2]


def test_shapes_are_the_manifests():
    names = gpu.shape_names()
    assert {"tiny", "tiny.en", "large-v3", "large-v3-turbo"} <= set(names)
    v3, turbo = gpu.shape("large-v3"), gpu.shape("large-v3-turbo")
    assert (v3.n_mels, v3.n_audio_state, v3.n_audio_layer, v3.n_text_layer, v3.n_vocab) == (128, 1280, 32, 32, 51866)
    assert turbo.n_text_layer == 4 and turbo.n_audio_layer == 32
    assert gpu.prompt_tokens(v3) == [50258, 50259, 50360, 50364]
    assert len(gpu.prompt_tokens(gpu.shape("tiny.en"))) == 3


def test_a_small_random_weight_run():
    """bench_shape end to end with a toy shape on MLX's default device (the CPU here): the rows it
    records make the table's lines, and the derived lines are what their definitions say."""
    import mlx.core as mx

    from whisper_mlx import runtime
    from whisper_mlx.model import ModelDimensions

    dtype = mx.float32 if runtime.on_cpu() else mx.float16
    dims = ModelDimensions(n_mels=80, n_audio_ctx=16, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=1)
    report = gpu.Report(device="test")
    gpu.bench_shape(report, "toy", dims, n_tokens=4, reps=1, with_torch=False, bandwidth=50.0)
    lines = gpu.lines(report.rows)
    assert [x["what"] for x in lines] == [gpu.ENCODER, gpu.STEP, "encoder + 4 greedy steps",
                                          "decoder step / bandwidth bound"]
    enc, step, total, bound = lines
    assert enc["mlx"] > 0 and enc["torch"] is None
    assert total["mlx"] == pytest.approx(enc["mlx"] + 4 * step["mlx"])
    nbytes = gpu.decoder_bytes_per_token(gpu.random_mlx_model(dims, dtype=dtype))
    assert bound["mlx"] == pytest.approx(step["mlx"] * 1e-3 / (nbytes / 50e9))
    by_entry = {(r.case, r.entry): r for r in report.rows}
    ours, graph = gpu.mlx_entry(dtype), gpu.mlx_entry(dtype, "mlx")
    graph_step = by_entry[(gpu.STEP, graph)]
    assert len(graph_step.times) == 3  # the steps after the first of one run, each timed
    assert len(by_entry[(gpu.ENCODER, ours)].times) == 10 and not by_entry[(gpu.STEP, ours)].times
    assert step["note"] == f"MLX-graph backend step {graph_step.seconds * 1e3:.2f} ms"


def test_run_as_a_file_says_how_to_run_it():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["tools/bench_gpu.py: run it from the repository root as "
                                                "`python -m tools.bench_gpu`"]


@pytest.mark.parametrize("args, said", [
    (["--tokens", "1", "--no-torch"], "--tokens must be at least 2"),
    (["--shapes", "huge"], "invalid choice: 'huge'"),
    (["--real", "tiny.en=/nowhere", "--clips", "."], "expected FAMILY=MODEL_DIR,PT"),
    (["--device", "cpu", "--shapes", "tiny"], "add --no-torch"),
])
def test_bad_input_is_one_line(args, said):
    proc = _tool(*args)
    assert proc.returncode == 2 and said in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
