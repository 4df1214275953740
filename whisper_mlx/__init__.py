"""OpenAI Whisper on MLX: transcription with word timestamps, on Apple silicon, CPUs and CUDA GPUs."""

from . import runtime  # noqa: F401  (first: picks an optimized BLAS before mlx.core loads)
from .decoding import DecodingOptions, DecodingResult, decode, detect_language
from .load import ModelLoadError, load_model
from .transcribe import transcribe
from .batched import transcribe_many  # noqa: E402  (after transcribe: it imports from there)
from .vad import VadOptions

__version__ = "0.1.0"

__all__ = [
    "DecodingOptions",
    "DecodingResult",
    "ModelLoadError",
    "decode",
    "detect_language",
    "load_model",
    "transcribe",
    "transcribe_many",
    "VadOptions",
    "__version__",
]
