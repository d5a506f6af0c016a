"""Read character vectors out of an installed R package's lazy-load data base.

The training text (Jane Austen's six novels) ships in Debian's `r-cran-janeaustenr`, whose
data lives in R's lazy-load format: `data/Rdata.rdx` (a gzip'd serialized index) and
`data/Rdata.rdb` (zlib blobs of serialized objects). Only what those files hold is
implemented here (version-2/3 XDR serialization of character vectors, named lists,
pairlists, symbols and the few atomic types R writes as attributes), so that no R
installation is needed. Anything else raises `ValueError` with the type code.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

# SEXP type codes (R Internals, "Serialization Formats").
_NILSXP, _SYMSXP, _LISTSXP, _CHARSXP = 0, 1, 2, 9
_LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = 10, 13, 14, 16, 19
_REFSXP, _NILVALUE, _GLOBALENV, _EMPTYENV, _BASEENV = 255, 254, 253, 242, 241
_NA_INT = -(2**31)


class _Reader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError(f"only XDR serialization is supported, got header {data[:2]!r}")
        self.data, self.pos = data, 2
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader version
        if version == 3:
            self.bytes(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported serialization version {version}")
        self.refs: list[Any] = []

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def bytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & 512), bool(flags & 1024)
        if kind in (_NILVALUE, _GLOBALENV, _EMPTYENV, _BASEENV):
            return None
        if kind == _REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == _SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == _LISTSXP:  # pairlist, returned as a dict (attribute lists are tagged)
            out: dict[Any, Any] = {}
            while kind == _LISTSXP:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else len(out)
                out[tag] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & 512), bool(flags & 1024)
            if kind != _NILVALUE:
                raise ValueError(f"pairlist ends in SEXP type {kind}")
            return out
        if kind == _CHARSXP:
            n = self.int()
            return None if n == -1 else self.bytes(n).decode("utf-8")
        if kind in (_LGLSXP, _INTSXP):
            n = self.int()
            value: Any = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == _REALSXP:
            n = self.int()
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (_STRSXP, _VECSXP):
            value = [self.item() for _ in range(self.int())]
        else:
            raise ValueError(f"unsupported SEXP type {kind}")
        if has_attr:
            attributes = self.item()
            names = attributes.get("names") if isinstance(attributes, dict) else None
            if kind == _VECSXP and names is not None:
                value = dict(zip(names, value))
        return value


def unserialize(data: bytes) -> Any:
    """Decode one R object serialized in XDR format (what `saveRDS`/lazy-load write)."""
    return _Reader(data).item()


def read_lazyload(filebase: Path) -> dict[str, Any]:
    """All objects of a lazy-load data base `filebase.rdx` / `filebase.rdb`, by name."""
    index = unserialize(gzip.decompress(Path(f"{filebase}.rdx").read_bytes()))
    blob = Path(f"{filebase}.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset) : int(offset) + int(length)]
        (size,) = struct.unpack_from(">I", chunk, 0)
        data = zlib.decompress(chunk[4:])
        if len(data) != size:
            raise ValueError(f"{name}: expected {size} bytes, got {len(data)}")
        out[name] = unserialize(data)
    return out
