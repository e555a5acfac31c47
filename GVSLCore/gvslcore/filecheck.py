"""Is a volume file complete? The bytes its header promises, and intact compressed streams.

ITK reads a truncated NIfTI without complaint (the missing voxels come back as zeros) and its
NIfTI writer reports a full disk only on stderr, so :func:`image_file_problem` is asked on every
read and on every written temporary file before it is renamed into place. It parses the header
itself (NIfTI-1/2, attached-data NRRD, MetaImage), decompresses a gzip/zlib stream to its end
(the stream's CRC/Adler checksum and completeness are verified by zlib) and compares the byte
count with what the header describes. Formats and encodings it does not know pass (None).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 22


class _Damaged(Exception):
    """A compressed stream that is corrupt or ends early; the message is a phrase for the user."""


def _inflated(f: BinaryIO, wbits: int) -> Iterator[bytes]:
    """The decompressed bytes of the stream(s) read from ``f``, at most CHUNK at a time (a file of
    zeros inflates a thousandfold: never all of it at once). Raises _Damaged."""
    d = zlib.decompressobj(wbits)
    pending = b""
    while True:
        chunk = pending or f.read(CHUNK)
        if not chunk:
            if not d.eof:
                raise _Damaged("its compressed data ends early (the file is truncated)")
            return
        try:
            yield d.decompress(chunk, CHUNK)
        except zlib.error as exc:
            raise _Damaged(f"its compressed data is corrupt ({exc})") from None
        if not d.eof:
            pending = d.unconsumed_tail
            continue
        rest = d.unused_data
        while not rest.strip(b"\0"):  # zero padding after the stream, or the end
            rest = f.read(CHUNK)
            if not rest:
                return
        if wbits != 31:  # one zlib stream: what follows it is not voxel data
            return
        d = zlib.decompressobj(wbits)  # the next gzip member
        pending = rest


def _inflate(path: Path, offset: int, wbits: int) -> tuple[bytes, int, str | None]:
    """(first bytes, total length, problem) of the compressed stream(s) from ``offset`` to the end."""
    head = b""
    total = 0
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            for out in _inflated(f, wbits):
                total += len(out)
                if len(head) < 1024:
                    head += out[: 1024 - len(head)]
        except _Damaged as exc:
            return head, total, str(exc)
    return head, total, None


def _nifti_expected(head: bytes) -> int | None:
    """Bytes a single-file NIfTI-1/2 with this header holds (vox_offset + voxel data), or None."""
    if len(head) < 348:
        return None
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540 and head[4:7] == b"n+2":
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = int(struct.unpack(endian + "q", head[168:176])[0])
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(n < 1 for n in dims[1: ndim + 1]):
        return None
    return max(offset, size + 4) + math.prod(dims[1: ndim + 1]) * bitpix // 8


_NRRD_SIZES = (("long long", 8), ("longlong", 8), ("int64", 8), ("double", 8), ("char", 1), ("int8", 1),
               ("short", 2), ("int16", 2), ("float", 4), ("int", 4))
_MET_SIZES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4, "ULONG": 4,
              "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8}


def _text_header(path: Path, end: re.Pattern[bytes]) -> tuple[bytes, int] | None:
    with open(path, "rb") as f:
        start = f.read(1 << 16)
    m = end.search(start)
    return (start[: m.start()], m.end()) if m else None


def _nrrd_problem(path: Path, size: int) -> tuple[int | None, str | None]:
    found = _text_header(path, re.compile(rb"\r?\n\r?\n"))
    if found is None:
        return None, None
    text, offset = found
    fields = {}
    for line in text.decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if "data file" in fields or "datafile" in fields or "sizes" not in fields:
        return None, None
    kind = fields.get("type", "").lower()
    nbytes = next((n for name, n in _NRRD_SIZES if name in kind), None)
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
    except ValueError:
        return None, None
    if nbytes is None:
        return None, None
    expected = math.prod(sizes) * nbytes
    encoding = fields.get("encoding", "raw").lower()
    if encoding == "raw":
        return expected, None if size - offset >= expected else f"it holds {size - offset} data bytes but its header describes {expected}"
    if encoding in ("gzip", "gz"):
        _, total, problem = _inflate(path, offset, 47)
        return expected, problem or (None if total >= expected else f"its data holds {total} bytes but its header describes {expected}")
    return None, None


def _meta_problem(path: Path, size: int) -> tuple[int | None, str | None]:
    found = _text_header(path, re.compile(rb"ElementDataFile\s*=\s*LOCAL[ \t]*\r?\n"))
    if found is None:
        return None, None
    text, offset = found
    fields = {}
    for line in text.decode("latin-1").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    try:
        dims = [int(s) for s in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        nbytes = _MET_SIZES[fields["ElementType"].removeprefix("MET_").removesuffix("_ARRAY")]
    except (KeyError, ValueError):
        return None, None
    expected = math.prod(dims) * channels * nbytes
    if fields.get("CompressedData", "False").lower() == "true":
        _, total, problem = _inflate(path, offset, 47)
        return expected, problem or (None if total >= expected else f"its data holds {total} bytes but its header describes {expected}")
    return expected, None if size - offset >= expected else f"it holds {size - offset} data bytes but its header describes {expected}"


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def image_file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the volume file ``path`` (truncated, corrupt compressed data, fewer
    bytes than its header describes), as a phrase for a message; None when it looks complete or
    its format is not one checked here."""
    path = Path(path)
    name = path.name.lower()
    try:
        size = path.stat().st_size
        if name.endswith(".nii.gz") and _starts_with(path, b"\x1f\x8b"):
            head, total, problem = _inflate(path, 0, 31)
            if problem:
                return problem
            expected = _nifti_expected(head)
            if expected is not None and total < expected:
                return f"it holds {total} bytes (uncompressed) but its header describes {expected}"
            return None
        if name.endswith((".nii", ".nii.gz")):  # a .nii.gz that is not gzip: ITK reads it as plain NIfTI
            with open(path, "rb") as f:
                expected = _nifti_expected(f.read(544))
            if expected is not None and size < expected:
                return f"it holds {size} bytes but its header describes {expected} (the file is truncated)"
            return None
        if name.endswith(".nrrd"):
            return _nrrd_problem(path, size)[1]
        if name.endswith(".mha"):
            return _meta_problem(path, size)[1]
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return None


# -- non-finite voxels ------------------------------------------------------------------------------

# NIfTI datatype codes of real floating-point voxels and their numpy element types.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_float_layout(head: bytes) -> tuple[str, int, int] | None:
    """(numpy dtype string with byte order, voxel data offset, voxel count) of a single-file
    NIfTI-1/2 header with float32/float64 voxels, else None."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            code = struct.unpack(endian + "h", head[70:72])[0]
            dims = struct.unpack(endian + "8h", head[40:56])
            offset = max(352, int(struct.unpack(endian + "f", head[108:112])[0]))
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            code = struct.unpack(endian + "h", head[12:14])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = max(544, int(struct.unpack(endian + "q", head[168:176])[0]))
            break
    else:
        return None
    if code not in _NIFTI_FLOATS or not 1 <= dims[0] <= 7:
        return None
    return endian + _NIFTI_FLOATS[code], offset, math.prod(dims[1: dims[0] + 1])


def _chunks(path: Path, compressed: bool) -> Iterator[bytes]:
    with open(path, "rb") as f:
        if compressed:
            yield from _inflated(f, 31)
            return
        while chunk := f.read(CHUNK):
            yield chunk


def nifti_nonfinite(path: str | os.PathLike) -> int:
    """How many NaN/infinite voxels a float NIfTI file (.nii / .nii.gz) holds; 0 for other files.

    ITK's NIfTI reader turns NaN and infinity into 0, so the voxels are counted in the file
    itself, streaming (a chunk at a time, never the whole volume in memory).
    """
    import numpy as np

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return 0
    stream = _chunks(path, name.endswith(".gz") and _starts_with(path, b"\x1f\x8b"))
    head = b""
    try:
        for chunk in stream:
            head += chunk
            if len(head) >= 544:
                break
        layout = _nifti_float_layout(head)
        if layout is None:
            return 0
        dtype, offset, remaining = layout
        item = np.dtype(dtype).itemsize
        buffer, bad = head[offset:], 0
        for chunk in itertools.chain([b""], stream):
            buffer += chunk
            usable = min(len(buffer) // item, remaining)
            values = np.frombuffer(buffer[: usable * item], dtype=dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            remaining -= usable
            buffer = buffer[usable * item:]
            if remaining <= 0:
                break
    except (OSError, _Damaged):
        return 0  # a damaged file is image_file_problem's to report
    return bad
