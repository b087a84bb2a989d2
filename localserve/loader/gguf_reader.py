"""A fast GGUF reader: metadata, tensor table, and memory-mapped tensor data.

gguf-py's GGUFReader builds a numpy view per array element, which costs ~30 s on a 262k-token
vocabulary; this one walks the header with `struct` and leaves string arrays (vocabularies,
merges) unread until asked for. Tensor bytes are never copied until a tensor is used.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
_FLOAT_NUMPY = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                GGMLQuantizationType.BF16: np.uint16}


@dataclass(frozen=True)
class StringArray:
    """A string array left unread in the file (vocabularies are big); see GGUFFile.strings."""

    offset: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (ggml lists the fastest dimension first)
    qtype: int  # a gguf.GGMLQuantizationType value
    offset: int  # absolute, in the file
    nbytes: int


class GGUFFile:
    """One GGUF file: `metadata` (key -> value), `tensors` (name -> TensorInfo)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    # -- header ----------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        if len(buf) < 24 or buf[:4] != b"GGUF":
            raise ValueError(f"{self.path} is not a GGUF file (no GGUF magic bytes)")
        version, num_tensors, num_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        pos = 24
        for _ in range(num_kv):
            key, pos = self._string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            self.metadata[key], pos = self._value(pos + 4, vtype)
        infos = []
        for _ in range(num_tensors):
            name, pos = self._string(pos)
            (ndim,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4)
            qtype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * ndim)
            pos += 4 + 8 * ndim + 12
            infos.append((name, tuple(reversed(dims)), qtype, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        data_start = (pos + alignment - 1) // alignment * alignment
        for name, shape, qtype, offset in infos:
            self.tensors[name] = TensorInfo(name, shape, qtype, data_start + offset,
                                            _nbytes(qtype, shape))

    def _string(self, pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._buf, pos)
        end = pos + 8 + length
        return self._buf[pos + 8:end].decode("utf-8", errors="replace"), end

    def _value(self, pos: int, vtype: int) -> tuple[Any, int]:
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype]
            return struct.unpack_from(fmt, self._buf, pos)[0], pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return self._string(pos)
        if vtype != _ARRAY:
            raise ValueError(f"{self.path}: unknown GGUF metadata type {vtype}")
        etype, count = struct.unpack_from("<IQ", self._buf, pos)
        pos += 12
        if etype in _NUMPY:
            arr = np.frombuffer(self._buf, dtype=_NUMPY[etype], count=count, offset=pos)
            return arr.tolist(), pos + arr.nbytes
        if etype == _STRING:
            start = pos
            for _ in range(count):  # walk the lengths; the strings are read on demand
                (length,) = struct.unpack_from("<Q", self._buf, pos)
                pos += 8 + length
            return StringArray(start, count), pos
        values = []
        for _ in range(count):
            value, pos = self._value(pos, etype)
            values.append(value)
        return values, pos

    # -- access ----------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        value = self.metadata.get(key, default)
        return self.strings(key) if isinstance(value, StringArray) else value

    def strings(self, key: str) -> list[str]:
        """A string-array metadata value (e.g. tokenizer.ggml.tokens), read now."""
        value = self.metadata[key]
        if not isinstance(value, StringArray):
            return list(value)
        out, pos = [], value.offset
        for _ in range(value.count):
            s, pos = self._string(pos)
            out.append(s)
        return out

    def raw(self, name: str) -> np.ndarray:
        """A read-only view of a tensor's data: float types typed (BF16 as uint16) in its shape;
        block types as uint8 rows [prod(shape[:-1]), row_bytes]."""
        info = self.tensors[name]
        data = np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        if info.qtype in _FLOAT_NUMPY:
            return data.view(_FLOAT_NUMPY[info.qtype]).reshape(info.shape)
        rows = prod(info.shape[:-1])
        return data.reshape(rows, info.nbytes // max(rows, 1))

    def float_tensor(self, name: str) -> torch.Tensor:
        """An F32/F16/BF16 tensor copied out of the file, in its stored dtype."""
        info = self.tensors[name]
        arr = np.array(self.raw(name))  # copy: the mmap is read-only
        tensor = torch.from_numpy(arr)
        if info.qtype == GGMLQuantizationType.BF16:
            tensor = tensor.view(torch.bfloat16)
        return tensor

    def close(self) -> None:
        self._buf.close()


def _nbytes(qtype: int, shape: tuple[int, ...]) -> int:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        return 0  # unknown type: the loader names it when it gets there
    return prod(shape) // block * size
