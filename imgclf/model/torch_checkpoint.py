"""Read a PyTorch checkpoint (a state_dict of tensors) into numpy arrays, without importing torch.

Only PyTorch's *legacy* serialisation format is supported (what `torch.save` wrote before 1.6, or
with `_use_new_zipfile_serialization=False`). Its layout, one stream after another:

1. pickle: the magic number 0x1950A86A20F9469CFC6C
2. pickle: the protocol version (1001)
3. pickle: a sys-info dict (endianness, sizes of short/int/long)
4. pickle: the object itself; each tensor is `torch._utils._rebuild_tensor_v2(storage, offset,
   size, stride, ...)` whose storage is a *persistent id*
   `("storage", <torch.FloatStorage>, key, location, numel, view_metadata)`
5. pickle: the list of storage keys, in the order their data follows
6. per key: an 8-byte little-endian element count, then the raw little-endian data

The object pickle is read with a restricted unpickler that resolves only the handful of globals a
state_dict needs (OrderedDict, the tensor-rebuild functions, the storage classes) to inert local
stand-ins; anything else (e.g. a pickled nn.Module or arbitrary callables) fails with
`CheckpointError` before it can run. The newer zip format (`torch.save` default since 1.6) is
detected and refused with a clear message, as is anything that is not a PyTorch checkpoint.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype (little-endian, as torch writes on x86/ARM).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """The file is not a checkpoint this reader can (or may safely) load."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # filled after the object pickle, from the raw data section


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes are not read yet (they follow the object pickle)."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise CheckpointError(f"storage {self.storage.key!r} has no data section")
        if not self.size:  # 0-d tensor
            return np.array(data[self.offset])
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if min(self.size) > 0 and (self.offset < 0 or last >= data.size):
            raise CheckpointError(f"tensor view exceeds storage {self.storage.key!r}")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, *_args):
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor without a persistent storage reference")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | _StorageType] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: IO[bytes], storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(fh, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to unpickle {module}.{name}: only plain state_dicts of tensors "
                "(OrderedDict, torch._utils._rebuild_tensor*, torch.*Storage) are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise CheckpointError("unexpected persistent id in a header pickle")
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) == 6):
            raise CheckpointError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r}")
        if view_metadata is not None:
            raise CheckpointError("storage views (pre-0.4 checkpoints) are not supported")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return storage


def _load_header(fh: IO[bytes]) -> Any:
    try:
        return _RestrictedUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"not a PyTorch legacy checkpoint ({exc})") from exc


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def load_state_dict(path: Path | str) -> collections.OrderedDict[str, np.ndarray]:
    """A legacy-format `.pth`/`.pt` state_dict -> OrderedDict name -> numpy array (copies).

    Raises `CheckpointError` for the zip format, for non-checkpoints and for pickles that would need
    anything beyond tensors in (ordered) dicts.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is a zip-format PyTorch checkpoint (torch>=1.6 default); only the legacy "
            "format is supported: re-save it with torch.save(..., "
            "_use_new_zipfile_serialization=False)"
        )
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x80\x02":
            raise CheckpointError(f"{path} does not start with a pickle: not a PyTorch checkpoint")
        fh.seek(0)
        magic = _load_header(fh)
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path}: wrong magic number {magic!r}: not a PyTorch checkpoint")
        protocol = _load_header(fh)
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported protocol version {protocol!r}")
        sys_info = _load_header(fh)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise CheckpointError(f"{path}: only little-endian checkpoints are supported")

        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(fh, storages).load()
        keys = _RestrictedUnpickler(fh).load()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise CheckpointError(f"{path}: storage key list does not match the tensors")
        for key in map(str, keys):
            storage = storages[key]
            (count,) = np.frombuffer(fh.read(8), dtype="<i8")
            if count != storage.numel:
                raise CheckpointError(
                    f"{path}: storage {key!r} holds {count} elements, expected {storage.numel}"
                )
            nbytes = storage.numel * storage.dtype.itemsize
            raw = fh.read(nbytes)
            if len(raw) != nbytes:
                raise CheckpointError(f"{path}: truncated data for storage {key!r}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
        if fh.read(1):
            raise CheckpointError(f"{path}: unexpected trailing bytes after the tensor data")

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict, got {type(obj).__name__}")
    state = _materialise(obj)
    for name, value in state.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
    return collections.OrderedDict(state)
