"""The safetensors format, read one tensor at a time and written as a stream.

A file is an 8-byte little-endian header length N, N bytes of JSON (padded with spaces to a
multiple of 8) mapping each name to its dtype, shape and ``data_offsets`` [begin, end) in
the data that follows, and an optional ``"__metadata__"`` of strings. Reading maps only the
bytes of the tensor asked for and drops the mapping once the tensor is copied, so loading a
checkpoint never holds the file and its copy at once; writing appends one tensor at a time.
"""

import json
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
_ALIGNMENT = 8


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read, naming the file and what is wrong."""


class SafetensorsFile:
    """The header of one file: ``names``, ``shape(name)``, ``dtype(name)``, and ``read(name)``,
    a copy of one tensor in host memory (the file is mapped only while it is copied)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as file:
                prefix = file.read(8)
                if len(prefix) < 8:
                    raise SafetensorsError(f"{self.path} is too short to be a safetensors file")
                (header_size,) = struct.unpack("<Q", prefix)
                size = self.path.stat().st_size
                if header_size > size - 8:
                    raise SafetensorsError(
                        f"{self.path} has a header of {header_size} bytes in a file of {size}"
                    )
                header = json.loads(file.read(header_size))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SafetensorsError(f"cannot read safetensors file {self.path}: {error}") from error
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_size
        self._entries = header
        for name, entry in header.items():
            self._check_entry(name, entry, size)

    def _check_entry(self, name: str, entry: Mapping, size: int) -> None:
        if entry.get("dtype") not in DTYPES:
            raise SafetensorsError(
                f"tensor {name} in {self.path} has dtype {entry.get('dtype')!r}; readable: "
                f"{', '.join(DTYPES)}"
            )
        begin, end = entry["data_offsets"]
        expected = int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize
        if end - begin != expected or self._data_start + end > size:
            raise SafetensorsError(
                f"tensor {name} in {self.path} has {end - begin} bytes at offsets "
                f"{begin}..{end}, but its shape {tuple(entry['shape'])} needs {expected} and "
                f"the file holds {size - self._data_start} bytes of data (truncated?)"
            )

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return DTYPES[self._entries[name]["dtype"]]

    def read(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        if end == begin:
            return np.zeros(entry["shape"], dtype)
        offset = self._data_start + begin
        page_start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as file:
            mapped = mmap.mmap(
                file.fileno(),
                offset + (end - begin) - page_start,
                offset=page_start,
                access=mmap.ACCESS_READ,
            )
        try:
            view = np.frombuffer(
                mapped, dtype, count=(end - begin) // dtype.itemsize, offset=offset - page_start
            )
            tensor = view.reshape(entry["shape"]).copy()
            del view
        finally:
            mapped.close()
        return tensor


def write_safetensors(
    path: str | os.PathLike,
    tensors: Iterator[tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Writes ``(name, array)`` pairs as they come (one in memory at a time) to ``path``;
    returns each name's size in bytes. The data goes to a scratch file beside ``path`` first
    (the header, written first, needs every offset), which is then removed."""
    path = Path(path)
    scratch = path.with_name(path.name + ".data")
    header, sizes, offset = {}, {}, 0
    try:
        with open(scratch, "wb") as data:
            for name, array in tensors:
                array = np.ascontiguousarray(array)
                if array.dtype not in NAMES:
                    raise SafetensorsError(f"tensor {name} has dtype {array.dtype}, not storable")
                if name in header:
                    raise SafetensorsError(f"tensor {name} is written twice")
                data.write(array.tobytes())
                header[name] = {
                    "dtype": NAMES[array.dtype],
                    "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes],
                }
                sizes[name] = array.nbytes
                offset += array.nbytes
        if metadata:
            header["__metadata__"] = dict(metadata)
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % _ALIGNMENT)
        with open(path, "wb") as file, open(scratch, "rb") as data:
            file.write(struct.pack("<Q", len(encoded)))
            file.write(encoded)
            while chunk := data.read(1 << 24):
                file.write(chunk)
    finally:
        scratch.unlink(missing_ok=True)
    return sizes
