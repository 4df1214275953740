"""`whisper-mlx serve`: an OpenAI-compatible transcription server (`pip install "whisper-mlx[server]"`).

    whisper-mlx serve --model tiny.en-4bit --model base-fp16 --host 127.0.0.1 --port 8000

`create_app(ServerConfig(...))` gives the ASGI app for embedding in another server. The ASGI
stack is imported on first use of these names, so `whisper-mlx serve` without the extra says
what to install instead of failing on an import.
"""

from .cli import main

__all__ = ["ServerConfig", "create_app", "main"]


def __getattr__(name: str):
    if name in ("ServerConfig", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
