"""whisper-mlx zoo: manifests → sources → conversion → gates → model cards → build.

The zoo produces model directories (docs/FORMAT.md); the runtime `whisper_mlx` never imports it.
"""

CONVERTER_VERSION = "0.1.0"
