"""Reading safetensors checkpoints tensor by tensor, without torch.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian N, N bytes of
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then
the raw little-endian data. :class:`SafetensorsFiles` reads the headers of one file or of the
shards a ``model.safetensors.index.json`` names, checks every tensor's bytes lie inside its
file (a truncated download is refused when opened, naming the first tensor it cuts), and
returns one tensor at a time as a numpy array read straight into its buffer, so a reader holds
only the tensor asked for. The library's own numpy frontend is not used because it has no
bfloat16 (``TypeError: data type 'bfloat16' not understood``, safetensors 0.8), the dtype most
Llama checkpoints are stored in; ``ml_dtypes`` (a JAX dependency) supplies it here.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

from jaxgen.errors import DataError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _header(path: str) -> tuple[dict, int]:
    """(tensor entries, offset of the data) of one safetensors file; DataError if malformed."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DataError(f"{path} is not a safetensors file (shorter than its header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise DataError(f"{path} is truncated: its header alone needs {n} bytes")
            meta = json.loads(f.read(n))
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} has a malformed safetensors header ({e})") from None
    meta.pop("__metadata__", None)
    start = 8 + n
    for name, entry in meta.items():
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in DTYPES:
            raise DataError(f"{path}: tensor {name} has dtype {entry['dtype']}, which jaxgen "
                            f"does not read ({', '.join(DTYPES)})")
        want = math.prod(entry["shape"]) * np.dtype(DTYPES[entry["dtype"]]).itemsize
        if end - begin != want:
            raise DataError(f"{path}: tensor {name} has {end - begin} bytes for shape "
                            f"{entry['shape']} {entry['dtype']} ({want} expected)")
        if start + end > size:
            raise DataError(f"{path} is truncated: tensor {name} ends at byte {start + end} "
                            f"of a {size}-byte file")
    return meta, start


class SafetensorsFiles:
    """The tensors of a checkpoint folder (``model.safetensors`` or a sharded index), or of
    one ``.safetensors`` file, by name. ``get(name)`` returns a fresh numpy array."""

    def __init__(self, path: str):
        self.path = path
        self._where: dict[str, tuple[str, dict, int]] = {}
        files = self._files(path)
        for file in files:
            meta, start = _header(file)
            for name, entry in meta.items():
                self._where[name] = (file, entry, start)

    @staticmethod
    def _files(path: str) -> list[str]:
        if os.path.isfile(path):
            return [path]
        index = os.path.join(path, INDEX_FILE)
        if os.path.exists(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DataError(f"{index} cannot be read as a safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
            if missing:
                raise DataError(f"{index} names {missing[0]}, which is missing from {path}")
            return [os.path.join(path, f) for f in files]
        single = os.path.join(path, SINGLE_FILE)
        if not os.path.exists(single):
            raise DataError(f"{path} has no {SINGLE_FILE} or {INDEX_FILE} (jaxgen reads "
                            "safetensors weights, not pytorch_model.bin)")
        return [single]

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> Iterator[str]:
        return iter(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][1]["shape"])

    def get(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a new numpy array in its stored dtype."""
        if name not in self._where:
            raise DataError(f"{self.path} has no tensor {name}")
        file, entry, start = self._where[name]
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        out = np.empty(entry["shape"], dtype)
        if end > begin:
            with open(file, "rb") as f:
                f.seek(start + begin)
                if f.readinto(out.reshape(-1).view(np.uint8)) != end - begin:
                    raise DataError(f"{file} is truncated inside tensor {name}")
        return out


def read_json(path: str, missing: str = "") -> dict:
    """A JSON object file as a dict; DataError (``missing`` or "PATH is missing") when it is
    absent, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except FileNotFoundError:
        raise DataError(missing or f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(out, dict):
        raise DataError(f"{path} is not a JSON object")
    return out


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    """Writes ``tensors`` (numpy, any dtype of :data:`DTYPES`) as one safetensors file,
    atomically (a temporary file renamed into place)."""
    names = {np.dtype(v).name: k for k, v in DTYPES.items()}
    header, offset, order = {}, 0, sorted(tensors)
    for name in order:
        a = tensors[name]
        kind = names[np.dtype(a.dtype).name]
        header[name] = {"dtype": kind, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in order:
            f.write(np.ascontiguousarray(tensors[name]).astype(
                tensors[name].dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)
