"""CTranslate2 Whisper conversions (a directory or an installed pip package) → OpenAI state dict.

A CTranslate2 `model.bin` is: version, spec name, revision, then named arrays, then aliases.
Self-attention fuses query/key/value, cross-attention fuses key/value; the key has no bias.
Some packages split model.bin into `model.bin.part1`, `model.bin.part2`, ... (concatenated here).

A location is a directory (written with a "/", or starting with "~" or ".") or the name of an
installed distribution. Locations are resolved only when a build reads the source, and never by
importing: a directory's own entries are read (not walked), a distribution's files come from its
metadata (the RECORD pip wrote), looked up under a name that must match DIST_NAME.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import struct
from pathlib import Path

import numpy as np

from .. import manifest
from .checkpoint import Checkpoint, SourceError, dims_from_state_dict, sinusoids, verify_sha256

KIND = "ctranslate2"
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16
_PART = re.compile(r"^model\.bin\.part(\d+)$")
DIST_NAME = re.compile(rf"^{manifest.DIST_NAME}$")


def is_directory_location(location: str | Path) -> bool:
    """Whether a location names a directory (else: an installed distribution)."""
    return isinstance(location, Path) or "/" in location or location.startswith(("~", "."))


def locate(locations: str | Path | list) -> tuple[list[Path], Path | None]:
    """The model.bin file(s) in order and the config.json, from directories or distribution names."""
    if isinstance(locations, (str, Path)):
        locations = [locations]
    parts: list[tuple[int, Path]] = []
    config = None
    for location in locations:
        for path in sorted(_files(location)):
            if path.name == "model.bin":
                parts.append((0, path))
            elif m := _PART.match(path.name):
                parts.append((int(m.group(1)), path))
            else:
                continue
            if config is None and (path.parent / "config.json").is_file():
                config = path.parent / "config.json"
    if not parts:
        raise SourceError(f"{KIND} source {locations}: no model.bin or model.bin.partN found")
    parts.sort()
    if len(parts) > 1 and [n for n, _ in parts] != list(range(1, len(parts) + 1)):
        raise SourceError(f"{KIND} source {locations}: incomplete parts {[p.name for _, p in parts]}")
    return [p for _, p in parts], config


def _files(location: str | Path) -> list[Path]:
    """The files a location offers: a directory's own entries, or an installed distribution's
    recorded files (importlib.metadata: no import of the package, no directory walk)."""
    if is_directory_location(location):
        root = Path(location).expanduser()
        if not root.is_dir():
            raise SourceError(f"{KIND} source {str(location)!r}: no such directory")
        return [p for p in root.iterdir() if p.is_file()]
    if not DIST_NAME.match(location):
        raise SourceError(f"{KIND} source {location!r}: not a distribution name (letters, digits, '.', '_', '-') "
                          "nor a directory (write it with a '/')")
    try:
        dist = importlib.metadata.distribution(location)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"{KIND} source {location!r}: no such directory or installed package (pip install it)") from None
    return [Path(dist.locate_file(f)) for f in dist.files or () if f.name == "model.bin" or _PART.match(f.name)]


def available(locations: str | Path | list) -> bool:
    """True when the files can be found locally."""
    try:
        locate(locations)
    except SourceError:
        return False
    return True


def read_model_bin(data: bytes, name: str = "model.bin") -> dict[str, np.ndarray]:
    """Parse a CTranslate2 model.bin into {variable name: array}; aliases resolve to their target."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (n,) = take("H")
        s = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return s

    try:
        (version,) = take("I")
        if version < 5:
            raise SourceError(f"{name}: CTranslate2 binary version {version} is not supported")
        spec = string()
        if spec != "WhisperSpec":
            raise SourceError(f"{name}: a {spec}, not a Whisper model")
        take("I")  # spec revision
        (count,) = take("I")
        out: dict[str, np.ndarray] = {}
        for _ in range(count):
            var = string()
            (rank,) = take("B")
            shape = take(f"{rank}I") if rank else ()
            (type_id,) = take("B")
            (nbytes,) = take("I")
            raw = data[pos : pos + nbytes]
            pos += nbytes
            dtype = _DTYPES[type_id]
            if dtype is None:
                raise SourceError(f"{name}: variable {var} is bfloat16 (not supported)")
            out[var] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        (n_alias,) = take("I")
        for _ in range(n_alias):
            alias, target = string(), string()
            out[alias] = out[target]
    except (struct.error, IndexError, ValueError) as e:
        raise SourceError(f"{name}: truncated or corrupt CTranslate2 model ({e})") from None
    return out


def to_openai(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename CTranslate2 Whisper variables to OpenAI names, splitting the fused projections."""
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/gamma"]
        sd[f"{dst}.bias"] = v[f"{src}/beta"]

    def fused(dsts: list[str], src: str) -> None:
        """Split a fused projection; the key (named ...key) has no bias in OpenAI's model."""
        weights = np.split(v[f"{src}/weight"], len(dsts), axis=0)
        biases = np.split(v[f"{src}/bias"], len(dsts), axis=0)
        for dst, w, b in zip(dsts, weights, biases):
            sd[f"{dst}.weight"] = w
            if not dst.endswith(".key"):
                sd[f"{dst}.bias"] = b

    def block(dst: str, src: str, cross: bool) -> None:
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        fused([f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0")
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        if cross:
            norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            fused([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1")
            linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    n_state = v["encoder/conv1/weight"].shape[0]
    n_ctx = v["encoder/position_encodings/encodings"].shape[0]
    sd["encoder.positional_embedding"] = sinusoids(n_ctx, n_state).astype(v["encoder/conv1/weight"].dtype)
    for i in range(_count(v, "encoder")):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    norm("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    for i in range(_count(v, "decoder")):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    norm("decoder.ln", "decoder/layer_norm")
    return {k: np.array(a, copy=True) for k, a in sd.items()}


def _count(v: dict, side: str) -> int:
    return len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})


def load(locations: str | Path | list, sha256: dict[str, str] | None = None) -> Checkpoint:
    """Read a CTranslate2 Whisper model (dir, package name, or a list for split parts).

    sha256: expected {file name: sha256}; a mismatch refuses the source.
    """
    parts, config_path = locate(locations)
    sha256 = sha256 or {}
    hashes = {}
    for path in parts + ([config_path] if config_path else []):
        hashes[path.name] = verify_sha256(path, sha256.get(path.name))
    missing = sorted(set(sha256) - set(hashes))
    if missing:
        raise SourceError(f"{KIND} source {locations}: expected file(s) not found: {', '.join(missing)}")
    data = b"".join(p.read_bytes() for p in parts)
    variables = read_model_bin(data, name=str(parts[0]))
    try:
        sd = to_openai(variables)
    except KeyError as e:
        raise SourceError(f"{parts[0]}: missing variable {e.args[0]} (not a Whisper conversion?)") from None
    dims = dims_from_state_dict(
        sd, int(variables["encoder/num_heads"]), int(variables["decoder/num_heads"])
    )
    heads = None
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise SourceError(f"{config_path}: not valid JSON ({e})") from None
        if config.get("alignment_heads"):
            heads = [[int(layer), int(head)] for layer, head in config["alignment_heads"]]
    location = [str(x) for x in locations] if isinstance(locations, list) else str(locations)
    provenance = {"kind": KIND, "location": location, "sha256": hashes}
    return Checkpoint(state_dict=sd, dims=dims, alignment_heads=heads, provenance=provenance)
