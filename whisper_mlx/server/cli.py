"""`whisper-mlx serve`: parse the options, optionally load the models, run uvicorn."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import signal
import sys
from typing import Sequence

PROG = "whisper-mlx serve"
KEY_ENV = "WHISPER_MLX_API_KEY"


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve OpenAI's audio API (/v1/audio/transcriptions, /v1/audio/translations, /v1/models) "
                    "with whisper_mlx models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", "-m", dest="models", action="append", required=True, metavar="MODEL",
                   help="a model to serve (repeatable): a zoo short name, Hub repo id or directory, as "
                        "`whisper-mlx --model` takes it; `ID=MODEL` serves it under the id ID. Requests "
                        "name it in their `model` field")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (localhost only by default)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-loaded", type=_positive(int), default=2,
                   help="models kept loaded at once; the least recently used is dropped past this")
    p.add_argument("--max-upload-mb", type=_positive(float), default=25.0,
                   help="largest request body accepted, in MiB (larger: 413)")
    p.add_argument("--timeout", type=_positive(float), default=600.0,
                   help="seconds a request may queue and run before it gets 504")
    p.add_argument("--batch-size", type=_positive(int), default=1,
                   help="above 1: requests waiting for the same model (and options) are transcribed together "
                        "by the batched decoder, this many 30 s windows per batch; their windows are then "
                        "decoded independently (no conditioning on the text before), so answers can differ "
                        "slightly from transcribe's sequential loop. 1: each request through transcribe")
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer KEY` on /v1/ (default: ${KEY_ENV} if set, else no key)")
    p.add_argument("--preload", action="store_true",
                   help="load the models (up to --max-loaded) before listening; exit if one cannot load")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None,
                   help="MLX device (default: the GPU where there is one)")
    p.add_argument("--backend", choices=["mlx", "cpu", "cuda"], default=None,
                   help="decoding backend (default: chosen for this machine, see `whisper-mlx doctor`)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="log level (info: one line per request)")
    return p


def parse_models(specs: list[str]) -> dict[str, str]:
    """`--model` values as {id: source}; ValueError names a duplicate or empty one."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            name = source = spec
        name, source = name.strip(), source.strip()
        if not name or not source:
            raise ValueError(f"--model {spec!r}: expected MODEL or ID=MODEL")
        if name in models:
            raise ValueError(f"--model {spec!r}: the id {name!r} is served twice")
        models[name] = source
    return models


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted; returns the exit status (1: a model failed to preload, 2: usage)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        models = parse_models(args.models)
    except ValueError as e:
        parser.error(str(e))
    try:
        import uvicorn
        from starlette import formparsers

        from .app import Service, ServerConfig, create_app

        if formparsers.multipart is None:
            raise ImportError("python-multipart is not installed", name="python-multipart")
    except ImportError as e:
        print(f"{PROG}: error: the server needs the `server` extra ({e.name} is missing): "
              "pip install 'whisper-mlx[server]'", file=sys.stderr)
        return 2
    from .. import runtime
    from ..load import load_model

    try:
        runtime.set_device(args.device)
    except (RuntimeError, ValueError) as e:
        print(f"{PROG}: error: --device {args.device}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    api_key = args.api_key if args.api_key is not None else (os.environ.get(KEY_ENV) or None)
    if not _loopback(args.host) and api_key is None:
        logging.getLogger("whisper_mlx.server").warning(
            "listening on %s without an API key: anyone who can reach this port can use it "
            "(--api-key or $%s)", args.host, KEY_ENV)
    config = ServerConfig(models=models, max_loaded=args.max_loaded, max_upload_mb=args.max_upload_mb,
                          timeout=args.timeout, api_key=api_key, batch_size=args.batch_size)
    service = Service.start(config, loader=functools.partial(load_model, backend=args.backend))
    try:
        if args.preload:
            from .workers import ModelUnavailable

            try:
                for name in list(models)[: config.max_loaded]:
                    service.pool.get(name)
            except ModelUnavailable as e:
                print(f"{PROG}: error: {e}", file=sys.stderr)
                return 1
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the
        # handler it found: make that handler end the process through `finally` (uploads removed)
        signal.signal(signal.SIGTERM, _exit_quietly)
        signal.signal(signal.SIGINT, _exit_quietly)
        uvicorn.run(create_app(config, service=service), host=args.host, port=args.port,
                    log_level=args.log_level, access_log=False, timeout_graceful_shutdown=5)
    except (SystemExit, KeyboardInterrupt) as e:
        return e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 0
    finally:
        service.stop()
    return 0


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
