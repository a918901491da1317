"""The arrays of an uncompressed `.npz` file mapped read-only, as `np.load(mmap_mode="r")` maps a `.npy`.

`np.load` ignores `mmap_mode` for `.npz` files and reads every array into the process. A served
graph's arrays (its neighbour lists and search tree) and the BM25 postings are the same bytes in every
worker of a machine, so they are mapped instead: the workers share one copy through the page cache
(at 1M sentences ~0.17 GB per extra worker). `np.savez` stores its members uncompressed, one `.npy`
after another inside the zip, so each member's array is a contiguous run of the file; a compressed
member (or one with Python objects) is read as `np.load` reads it.

`save_npz` writes what `np.savez` writes (any `np.load` reads it), with each member's data starting on
a 64-byte boundary (zip's extra field pads the local header, as Android's zipalign does): `np.savez`
leaves arrays at arbitrary offsets, and a mapped array is then unaligned for its dtype.
"""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes of fields, file name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ALIGNMENT = 64  # the .npy header pads the array to a multiple of 64 bytes from the member's start
_PADDING_ID = 0xD935  # the extra-field id zipalign uses for padding
_ZIP64_EXTRA = 20  # what zipfile adds to a local header for a member of 4 GiB or more


def read_npy_header(handle) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The `.npy` header at `handle`'s position: (shape, fortran_order, dtype, the array's file offset)."""
    version = np.lib.format.read_magic(handle)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(handle)
    return shape, fortran_order, dtype, handle.tell()


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` as an uncompressed `.npz` whose arrays start 64-byte aligned in the file."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            data = buffer.getvalue()
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            header = _LOCAL_HEADER.size + len(info.filename.encode("utf-8")) + 4
            header += _ZIP64_EXTRA if len(data) > zipfile.ZIP64_LIMIT else 0
            padding = -(archive.fp.tell() + header) % _ALIGNMENT
            info.extra = struct.pack("<HH", _PADDING_ID, padding) + bytes(padding)
            archive.writestr(info, data)
    return path


def load_npz(path: str | Path, mapped: bool = True) -> dict[str, np.ndarray]:
    """Every array of the `.npz` at `path` by name: mapped read-only where stored uncompressed (when
    `mapped`), else read. Raises ValueError (or OSError) for a file that is not a readable `.npz`."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            array = _mapped_member(path, handle, info) if mapped and info.compress_type == zipfile.ZIP_STORED else None
            if array is None:
                with archive.open(info) as member:
                    array = np.lib.format.read_array(member, allow_pickle=False)
            arrays[name] = array
    return arrays


def _mapped_member(path: Path, handle, info: zipfile.ZipInfo) -> np.ndarray | None:
    handle.seek(info.header_offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
    if signature != _LOCAL_SIGNATURE:
        raise ValueError(f"{path}: member {info.filename} has no local header")
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    handle.seek(start)
    shape, fortran_order, dtype, offset = read_npy_header(handle)
    if dtype.hasobject:
        return None
    count = int(np.prod(shape, dtype=np.int64))
    if offset - start + count * dtype.itemsize != info.file_size:
        raise ValueError(f"{path}: member {info.filename} is not the array its header describes")
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")
    return np.asarray(mapped)  # a read-only ndarray view; the mapping lives as long as the array
