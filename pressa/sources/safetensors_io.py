"""A safetensors reader: header parsing, bf16/fp16/fp32 to float32, one tensor at a time.

Tensors are read with plain file reads rather than a memory map: mapped pages would count in the
process's resident memory until unmapped, so a 2 GB checkpoint would look like 2 GB of RSS."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from pressa.errors import CorruptModel

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def bf16_to_f32(raw: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """bfloat16 bits (as uint16) to float32: the high half of a float32 (in chunks: no second full-size
    temporary beside the result)."""
    flat, out = raw.reshape(-1), np.empty(raw.size, np.uint32)
    for i in range(0, flat.size, chunk):
        np.left_shift(flat[i:i + chunk], 16, out=out[i:i + chunk], dtype=np.uint32)
    return out.view(np.float32).reshape(raw.shape)


class SafetensorsFile:
    """One .safetensors file. Tensors are read lazily from a memory map."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise ValueError("file shorter than its 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                size = self.path.stat().st_size
                if n > size - 8 or n > 100_000_000:
                    raise ValueError(f"header length {n} exceeds the file size {size}")
                header = json.loads(f.read(n))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise CorruptModel(f"{self.path}: not a valid safetensors file ({err}); re-download it") from None
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._size = size
        self.header: dict[str, dict] = header
        for name, info in header.items():
            start, end = info.get("data_offsets", (0, -1))
            if info.get("dtype") not in _DTYPES or end > size - self._base or start > end:
                raise CorruptModel(f"{self.path}: tensor {name!r} has a bad dtype or offsets; re-download the file")

    def keys(self):
        return self.header.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The tensor (or its rows start..stop-1) as float32 (floats) or its own integer dtype, read from
        the file into memory of its own."""
        info = self.header[name]
        begin, end = info["data_offsets"]
        dt = np.dtype(_DTYPES[info["dtype"]])
        shape = list(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dt.itemsize:
            raise CorruptModel(f"{self.path}: tensor {name!r} is truncated; re-download the file")
        if stop is not None or start:
            row = int(np.prod(shape[1:], dtype=np.int64)) * dt.itemsize
            stop = shape[0] if stop is None else min(stop, shape[0])
            begin, end, shape = begin + start * row, begin + stop * row, [stop - start, *shape[1:]]
        raw = np.empty(int(np.prod(shape, dtype=np.int64)), dt)
        with open(self.path, "rb") as f:
            f.seek(self._base + begin)
            if f.readinto(memoryview(raw).cast("B")) != end - begin:
                raise CorruptModel(f"{self.path}: tensor {name!r} is truncated; re-download the file")
        arr = raw.reshape(shape)
        if info["dtype"] == "BF16":
            return bf16_to_f32(arr)
        return arr.astype(np.float32, copy=False) if arr.dtype.kind == "f" else arr
