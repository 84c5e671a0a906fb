"""pgvector's binary form: vectors to and from PostgreSQL without text.

pgvector's `vector_send` / `vector_recv` format is a big-endian int16 dimension, an int16 0, then the float32
values, big-endian. Written and read with numpy, a 512-d vector costs about a microsecond each way, where its text
form (`postgres_schema.vec_text` / `parse_vec`: 17 significant digits a value) costs about 300 us to write and
250 us to read in Python, and pgvector's parse on the server on top. Three uses:
- `embedding_copy`: the data of `COPY … (reference_id, fingerprint, embedding) FROM STDIN (FORMAT BINARY)`,
  PostgreSQL's binary COPY stream (header, one tuple a row, trailer), built for all rows at once.
- `unpack`: rows of vectors fetched with a binary cursor (`conn.cursor(binary=True)`: psycopg hands a type it
  has no loader for, as `vector`, over as the raw `bytes`).
- `VectorParams`: query parameters of type `vector` (and `vector[]`) sent in binary: the type's OIDs are read once
  per database (`VectorParams.read`), and registered on each cursor that sends them (`cursor`, about 15 us).
Values are exact both ways: float32 in, the same float32 stored and read back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types import TypeInfo

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, header extension length
COPY_TRAILER = struct.pack(">h", -1)


def pack(vector: np.ndarray) -> bytes:
    """One vector (float32 values) in pgvector's binary form."""
    v = np.asarray(vector, dtype=">f4").reshape(-1)
    return struct.pack(">hh", len(v), 0) + v.tobytes()


def unpack(payloads: Sequence[bytes], dim: int | None = None) -> np.ndarray:
    """float32 [n, dim] from pgvector binary payloads of `dim` values each (default: the first one's); ValueError
    when one has another size."""
    if not payloads:
        return np.zeros((0, dim or 0), dtype=np.float32)
    if dim is None:
        dim = int(struct.unpack_from(">h", payloads[0])[0])
    rows = np.frombuffer(b"".join(payloads), dtype=np.dtype([("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (dim,))]))
    if len(rows) != len(payloads) or not (rows["dim"] == dim).all():
        raise ValueError(f"expected pgvector payloads of {dim} values")
    return rows["v"].astype(np.float32)


def embedding_copy(reference_ids: Sequence[int], fingerprint: str, vectors: np.ndarray) -> bytes:
    """Binary COPY data of the rows (reference_id bigint, fingerprint text, embedding vector), one per vector."""
    vecs = np.asarray(vectors, dtype=np.float32)
    n, dim = vecs.shape
    fp = fingerprint.encode()
    row = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("fp_len", ">i4"), ("fp", f"S{len(fp)}"),
                    ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (dim,))])
    rows = np.zeros(n, dtype=row)
    rows["fields"], rows["id_len"], rows["fp_len"], rows["vec_len"], rows["dim"] = 3, 8, len(fp), 4 + 4 * dim, dim
    rows["id"] = np.asarray(reference_ids, dtype=np.int64)
    rows["fp"] = fp
    rows["v"] = vecs
    return COPY_HEADER + rows.tobytes() + COPY_TRAILER


class Vector:
    """A query parameter of type `vector`: pgvector's binary form of one vector (see `VectorParams`)."""

    __slots__ = ("data",)

    def __init__(self, vector: np.ndarray) -> None:
        self.data = pack(vector)


class VectorParams:
    """Sends `Vector` parameters (and lists of them, as `vector[]`) in binary; use `%b` placeholders for them."""

    def __init__(self, oid: int, array_oid: int) -> None:
        self._info = TypeInfo("vector", oid, array_oid)

        class _Dumper(Dumper):
            format = Format.BINARY

            def dump(self, obj: Vector) -> bytes:
                return obj.data

        _Dumper.oid = oid
        self._dumper = _Dumper

    @classmethod
    def read(cls, conn: psycopg.Connection[Any]) -> VectorParams:
        """The `vector` type's OIDs in the connection's database (pgvector on its search path)."""
        row = conn.execute("SELECT t.oid, t.typarray FROM pg_type t WHERE t.oid = 'vector'::regtype").fetchone()
        assert row is not None
        return cls(int(row[0]), int(row[1]))

    def cursor(self, conn: psycopg.Connection[Any], *, binary: bool = False) -> psycopg.Cursor[Any]:
        """A cursor of `conn` that sends `Vector` parameters (and, with `binary`, fetches results in binary)."""
        cur = conn.cursor(binary=binary)
        self._info.register(cur)
        cur.adapters.register_dumper(Vector, self._dumper)
        return cur


__all__ = ["COPY_HEADER", "COPY_TRAILER", "Vector", "VectorParams", "embedding_copy", "pack", "unpack"]
