"""pgvector's binary form (`skulens.catalog.postgres_binary`), against the session's real PostgreSQL + pgvector: the
float32 values go in and come back bit for bit (COPY rows, query parameters, binary fetches), and agree with
pgvector's own text form."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from pg_fixture import PgServer

from skulens.catalog.postgres_binary import Vector, VectorParams, embedding_copy, pack, unpack


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v[0, :3] = [0.1, -1e-30, 3.4e38]  # values whose shortest text differs from float64's, a tiny and a huge one
    return v


@pytest.fixture
def conn(postgres_server: PgServer, schema: str) -> Any:
    with psycopg.connect(postgres_server.url(), autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
        c.execute(f'CREATE TABLE "{schema}".e (reference_id bigint, fingerprint text, embedding vector)')
        c.execute(f'SET search_path = "{schema}", public')
        yield c


def test_copy_rows_store_the_exact_values(conn: Any) -> None:
    vecs = _vectors(50, 37)
    with conn.cursor().copy("COPY e (reference_id, fingerprint, embedding) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(embedding_copy(list(range(100, 150)), "fp/ü:1", vecs))
    rows = conn.execute("SELECT reference_id, fingerprint, embedding::text FROM e ORDER BY reference_id").fetchall()
    assert [r[0] for r in rows] == list(range(100, 150)) and {r[1] for r in rows} == {"fp/ü:1"}
    text = np.stack([np.asarray(r[2][1:-1].split(","), dtype=np.float32) for r in rows])
    assert np.array_equal(text, vecs)  # pgvector's own text form of what was copied in binary
    fetched = conn.cursor(binary=True).execute("SELECT embedding FROM e ORDER BY reference_id").fetchall()
    assert np.array_equal(unpack([r[0] for r in fetched]), vecs)
    assert np.array_equal(unpack([r[0] for r in fetched], 37), vecs)


def test_vector_parameters_are_sent_in_binary(conn: Any) -> None:
    vecs = _vectors(3, 8, seed=1)
    params = VectorParams.read(conn)
    cur = params.cursor(conn)
    rows = cur.execute("SELECT q.i, q.v::text, q.v <#> %(one)b FROM unnest(%(q)b::vector(8)[]) WITH ORDINALITY "
                       "AS q(v, i) ORDER BY q.i", {"q": [Vector(v) for v in vecs], "one": Vector(vecs[1])}).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert np.array_equal(np.stack([np.asarray(r[1][1:-1].split(","), dtype=np.float32) for r in rows]), vecs)
    assert rows[1][2] == pytest.approx(-float(vecs[1] @ vecs[1]), rel=1e-5)  # <#>: the negative inner product
    with pytest.raises(psycopg.errors.DataException):  # the dimension is checked by the server
        params.cursor(conn).execute("SELECT %(v)b::vector(9)", {"v": Vector(vecs[0])})


def test_unpack_refuses_payloads_of_another_size() -> None:
    a, b = pack(np.ones(4, dtype=np.float32)), pack(np.ones(5, dtype=np.float32))
    assert unpack([], 4).shape == (0, 4)
    with pytest.raises(ValueError):
        unpack([a, b])
    with pytest.raises(ValueError):
        unpack([a], 5)
