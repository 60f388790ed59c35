"""Read a UTF-8 text file (plain or gzip) line by line in bounded memory, with byte offsets for errors.

A line is read in pieces of at most `CHUNK` bytes, so a 50 MB line never becomes one 50 MB `bytes` object next to
its decoded copy; a piece cut in the middle of a UTF-8 sequence carries the incomplete bytes over to the next one.
Invalid UTF-8 is an error naming the file and the byte offset (offsets count the decompressed bytes of a .gz
file), or replaced by U+FFFD and counted; NUL bytes mean a binary file, which is always an error (the first
`SNIFF` bytes are checked before anything is decoded, so a binary file is named as such even when it starts with
bytes that are not UTF-8).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cptlab.errors import CptlabError

CHUNK = 1 << 20
SNIFF = 8192  # a NUL byte in the first this many bytes means binary, even if invalid UTF-8 comes before it
_MAGIC = {b"\x1f\x8b": "gzip data", b"PAR1": "a parquet file", b"PK\x03\x04": "a zip archive",
          b"%PDF": "a PDF", b"\x7fELF": "an executable", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image"}


@dataclass
class Line:
    text: str  # with its line terminator, as in the file (a leading UTF-8 BOM of the file is dropped)
    number: int  # 1-based
    offset: int  # byte offset of the line's start
    invalid: int  # invalid UTF-8 sequences replaced by U+FFFD in this line (0 unless on_decode_error != "error")


def open_binary(path: Path):
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise CptlabError(f"{path}: cannot open ({e.strerror or e})") from None


def _incomplete_tail(b: bytes) -> int:
    """How many bytes at the end of `b` start a UTF-8 sequence that continues beyond it."""
    n = len(b)
    for i in range(1, min(4, n) + 1):
        c = b[n - i]
        if c < 0x80:
            return 0
        if c >= 0xC0:
            need = 2 if c < 0xE0 else 3 if c < 0xF0 else 4
            return i if need > i else 0
    return 0


def _binary_error(path: Path, offset: int, head: bytes) -> CptlabError:
    kind = next((what for magic, what in _MAGIC.items() if head.startswith(magic)), None)
    looks = f"; it looks like {kind}" if kind else ""
    return CptlabError(f"{path}: binary file, not text (NUL byte at byte {offset}{looks}); expected UTF-8 text")


def iter_lines(path: Path, on_decode_error: str = "error") -> Iterator[Line]:
    """Every line of `path`, decoded; see the module doc for errors. `on_decode_error`: error | replace | skip
    (skip and replace both decode with U+FFFD and report the count in `Line.invalid`; the caller skips)."""
    f = open_binary(path)
    try:
        yield from _lines(f, path, on_decode_error)
    except (OSError, EOFError, zlib.error) as e:
        what = "not a valid gzip file" if path.name.lower().endswith(".gz") else "cannot read"
        raise CptlabError(f"{path}: {what} ({e})") from None
    finally:
        f.close()


def _lines(f, path: Path, on_decode_error: str) -> Iterator[Line]:
    offset = 0  # bytes consumed before `carry`
    number = 1
    carry = b""
    parts: list[str] = []
    invalid = 0
    line_offset = 0
    head = None
    peek = getattr(f, "peek", None)  # buffered and gzip files: look ahead without consuming
    if peek is not None:
        start = peek(SNIFF)[:SNIFF]
        nul = start.find(b"\0")
        if nul >= 0:
            raise _binary_error(path, nul, start[:8])
    while True:
        piece = f.readline(CHUNK)
        if head is None:
            head = piece[:8]
            if piece.startswith(b"\xef\xbb\xbf"):  # a BOM is not text
                piece = piece[3:]
                offset = line_offset = 3
        nul = piece.find(b"\0")
        if nul >= 0:
            raise _binary_error(path, offset + len(carry) + nul, head)
        data = carry + piece if carry else piece
        eof = not piece
        complete = eof or data.endswith(b"\n")
        cut = 0 if complete else _incomplete_tail(data)
        if cut:
            data, carry = data[:-cut], data[-cut:]
        else:
            carry = b""
        if data:
            try:
                parts.append(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                if on_decode_error == "error":
                    raise CptlabError(f"{path}: invalid UTF-8 at byte {offset + e.start} (line {number}); "
                                      f"use --on-decode-error replace|skip to read past it") from None
                text = data.decode("utf-8", "replace")
                invalid += text.count("\ufffd") - data.decode("utf-8", "ignore").count("\ufffd")
                parts.append(text)
            offset += len(data)
        if complete and parts:
            text = parts[0] if len(parts) == 1 else "".join(parts)
            parts = []
            yield Line(text, number, line_offset, invalid)
            number += 1
            line_offset = offset
            invalid = 0
        if eof:
            return
