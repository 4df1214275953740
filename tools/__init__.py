"""The zoo's command-line tools, run from the repository root as modules (no sys.path edits):

  python -m tools.build --list
  python -m tools.convert --torch-name-or-path tiny.en --mlx-path mlx_models/tiny.en
  python -m tools.publish tiny.en-4bit --build-dir build --dry-run
  python -m tools.bench --check benchmarks/baseline.json
  python -m tools.bench_gpu --shapes large-v3 --out benchmarks/gpu-h200.json

Each parses its arguments and calls a zoo or benchmarks function; no logic lives here.
"""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a usage error as one line (`prog: error: what; see --help`), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
