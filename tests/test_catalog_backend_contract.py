"""The `CatalogBackend` contract: behaviour every catalog backend must have, written once, run against each.

Every test here talks to a backend through `skulens.catalog.backend.CatalogBackend` only (no private attributes,
no SQLite / FAISS / SQL specifics) and states exact expected values, computed by brute force from the vectors it
wrote. The `backend_factory` fixture is parametrised over `BACKENDS`; each entry is a context manager that, given
the test's `tmp_path`, yields `open_(dim, fingerprint, settings_kwargs) -> CatalogBackend` creating a fresh,
EMPTY backend each call (independent of every other one), and cleans up what it created on exit. The fixture
closes every backend it handed out.

Adding a backend (e.g. PostgreSQL + pgvector) is one entry in `BACKENDS`:

    @contextlib.contextmanager
    def _postgres(tmp_path):
        dsn = os.environ.get("SKULENS_TEST_PG_DSN") or pytest.skip("no PostgreSQL (SKULENS_TEST_PG_DSN)")
        schemas = []
        def open_(dim, fingerprint, settings):
            schemas.append(f"contract_{uuid.uuid4().hex}")  # a fresh, empty catalog per call
            return PgCatalog.open(dsn, schema=schemas[-1], fingerprint=fingerprint, dim=dim,
                                  settings=CatalogSettings(**settings))
        try:
            yield open_
        finally:
            drop_schemas(dsn, schemas)

    BACKENDS = {"embedded": _embedded, "postgres": _postgres}

Points a new backend must take care of (each is pinned by a test below):
  * product ids, categories and label keys are validated and NFC-normalised exactly as `skulens.catalog.validation`
    does, and invalid ones raise `InvalidArgument` with `field` set, before anything is written;
  * `list_products` orders by product id in Unicode code-point order (= UTF-8 byte order; PostgreSQL needs
    `COLLATE "C"`), its page tokens are opaque keyset cursors bound to the category they were issued for, and the
    last page answers "" (no trailing empty page);
  * writes are all-or-nothing; `version()` increases with every committed write and only then (reads, refused
    writes and all-duplicate `add_references` leave it as it is);
  * `add_references` dedups by (product, lowercase content sha256), within a call too;
  * `search` aggregates references into products (best reference wins, its id is returned), applies category /
    label filters *inside* the search (k products come back however selective the filter), and decides verdicts
    with `skulens.catalog.matching.decide` over the products found (a runner-up is looked for even at top_k=1);
    thresholds default to `settings` and are overridable per call;
  * `close()` is idempotent and every call after it raises `CatalogClosed`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from catalog_helpers import product_refs, unit
from pg_fixture import shared_postgres

from skulens.catalog import (
    AlreadyExists,
    Catalog,
    CatalogClosed,
    CatalogError,
    CatalogSettings,
    InvalidArgument,
    NewReference,
    NotFound,
    SearchResult,
    Verdict,
)
from skulens.catalog.backend import CatalogBackend

DIM = 32
FP = "contract-model/random/32:0123456789abcdef"
EPS = 1e-5  # float32 inner products: backend vs numpy


# ================================================================ backends
Opener = Callable[[int, str, dict[str, Any]], CatalogBackend]


@contextlib.contextmanager
def _embedded(tmp_path: Path) -> Iterator[Opener]:
    """SQLite + FAISS (`Catalog`), one directory per backend under the test's tmp_path."""
    n = itertools.count()

    def open_(dim: int, fingerprint: str, settings: dict[str, Any]) -> CatalogBackend:
        # fast commits and no GPU probing: neither changes behaviour the contract looks at
        s = CatalogSettings(**{"synchronous": "NORMAL", "use_gpu": "never", **settings})
        return Catalog.open(tmp_path / f"embedded-{next(n)}", fingerprint=fingerprint, dim=dim, settings=s)

    yield open_


@contextlib.contextmanager
def _postgres(tmp_path: Path) -> Iterator[Opener]:
    """PostgreSQL + pgvector (`PostgresCatalog`): one fresh schema per backend in the session's embedded server
    (tests/pg_fixture.py; skipped where it cannot run, never on CI); the schemas are dropped on exit."""
    server = shared_postgres()  # before importing the backend: without psycopg this skips (fails on CI)
    from skulens.catalog.postgres import PostgresCatalog

    schemas: list[str] = []

    def open_(dim: int, fingerprint: str, settings: dict[str, Any]) -> CatalogBackend:
        schemas.append(server.new_schema())
        return PostgresCatalog.open(server.url(), schema=schemas[-1], fingerprint=fingerprint, dim=dim,
                                    settings=CatalogSettings(**settings))

    try:
        yield open_
    finally:
        server.drop_schemas(schemas)


@contextlib.contextmanager
def _postgres_mirrored(tmp_path: Path) -> Iterator[Opener]:
    """PostgreSQL + pgvector with a local FAISS copy answering searches (`MirroredCatalog`, `--catalog-cache
    faiss`): every contract test holds for it too."""
    with _postgres(tmp_path) as open_primary:
        from skulens.catalog.mirrored import MirroredCatalog
        from skulens.catalog.postgres import PostgresCatalog

        def open_(dim: int, fingerprint: str, settings: dict[str, Any]) -> CatalogBackend:
            primary = open_primary(dim, fingerprint, settings)
            assert isinstance(primary, PostgresCatalog)
            return MirroredCatalog.open(primary, poll_seconds=0.2)

        yield open_


BACKENDS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Opener]]] = {
    "embedded": _embedded,
    "postgres": _postgres,
    "postgres+mirror": _postgres_mirrored,
}


class Make(Protocol):
    def __call__(self, *, dim: int = DIM, fingerprint: str = FP, **settings: Any) -> CatalogBackend: ...


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """`make(dim=..., fingerprint=..., **CatalogSettings fields)`: a fresh empty backend; all closed at teardown."""
    opened: list[CatalogBackend] = []
    with BACKENDS[request.param](tmp_path) as open_:

        def make(*, dim: int = DIM, fingerprint: str = FP, **settings: Any) -> CatalogBackend:
            backend = open_(dim, fingerprint, settings)
            opened.append(backend)
            return backend

        try:
            yield make
        finally:
            for backend in reversed(opened):
                backend.close()


@pytest.fixture
def backend(backend_factory: Make) -> CatalogBackend:
    return backend_factory()


# ================================================================ helpers
def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def populate(b: CatalogBackend, n_products: int, refs_per: int, *, seed: int = 0,
             category: Callable[[int], str] = lambda i: "",
             labels: Callable[[int], dict[str, str]] = lambda i: {},
             ) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Products sku-000.. with `refs_per` references each scattered around a centre; (centres, refs, ids)."""
    centres, refs = product_refs(n_products, refs_per, b.dim, seed=seed)
    ids: dict[str, list[int]] = {}
    for i in range(n_products):
        pid = f"sku-{i:03d}"
        b.upsert_product(pid, f"Product {i}", category(i), labels(i))
        added = b.add_references(pid, [NewReference(refs[i, j], source=f"{pid}/{j}") for j in range(refs_per)])
        ids[pid] = [a.reference_id for a in added]
    return centres, refs, ids


def ranking(q: np.ndarray, refs: np.ndarray, ids: dict[str, list[int]],
            keep: Callable[[int], bool] = lambda i: True) -> list[tuple[str, float, int]]:
    """Brute force: (product_id, best reference score, best reference id) per kept product, best first."""
    out = []
    for i, pid in enumerate(ids):
        if keep(i):
            scores = refs[i] @ q
            j = int(np.argmax(scores))
            out.append((pid, float(scores[j]), ids[pid][j]))
    out.sort(key=lambda t: -t[1])
    return out


def assert_matches(result: SearchResult, expected: list[tuple[str, float, int]]) -> None:
    assert [m.product_id for m in result.matches] == [p for p, _, _ in expected]
    assert [m.reference_id for m in result.matches] == [r for _, _, r in expected]
    for m, (_, score, _) in zip(result.matches, expected, strict=True):
        assert m.score == pytest.approx(score, abs=EPS)


def raises_invalid(field: str, call: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgument) as err:
        call()
    assert err.value.field == field, (field, str(err.value))


# ================================================================ identity
def test_factory_makes_fresh_independent_backends_that_satisfy_the_protocol(backend_factory: Make) -> None:
    a = backend_factory()
    b = backend_factory(dim=16, fingerprint="other-model/16:ffff", unknown_threshold=0.33, max_top_k=7)
    assert isinstance(a, CatalogBackend) and isinstance(b, CatalogBackend)
    assert (a.dim, a.fingerprint) == (DIM, FP)
    assert (b.dim, b.fingerprint) == (16, "other-model/16:ffff")
    assert isinstance(b.settings, CatalogSettings)
    assert (b.settings.unknown_threshold, b.settings.max_top_k) == (0.33, 7)
    for x in (a, b):
        st = x.stats()
        assert (st.products, st.references, st.references_with_image) == (0, 0, 0)
        assert x.list_products() == ([], "")
    a.upsert_product("only-in-a")
    with pytest.raises(NotFound):
        b.get_product("only-in-a")
    assert (a.stats().products, b.stats().products) == (1, 0)


# ================================================================ products
def test_upsert_creates_then_replaces(backend: CatalogBackend) -> None:
    p, created = backend.upsert_product("sku-1", "Cola 0.5l", "drinks", {"brand": "cola", "size": "0.5l"})
    assert created is True
    assert (p.product_id, p.display_name, p.category, p.labels, p.reference_count) == (
        "sku-1", "Cola 0.5l", "drinks", {"brand": "cola", "size": "0.5l"}, 0)
    backend.add_references("sku-1", [NewReference(unit(np.ones(DIM)))])
    q, created = backend.upsert_product("sku-1", "Cola 0.5 l", "soft-drinks", {"brand": "cola-co"})
    assert created is False
    # everything replaced (labels too: not merged), the references kept
    assert (q.product_id, q.display_name, q.category, q.labels, q.reference_count) == (
        "sku-1", "Cola 0.5 l", "soft-drinks", {"brand": "cola-co"}, 1)
    assert q.created_at == pytest.approx(p.created_at, abs=1e-3) and q.updated_at >= q.created_at
    got = backend.get_product("sku-1").product
    assert (got.display_name, got.category, got.labels, got.reference_count) == (
        "Cola 0.5 l", "soft-drinks", {"brand": "cola-co"}, 1)
    r, created = backend.upsert_product("sku-1")  # defaults: name, category and labels cleared
    assert created is False and (r.display_name, r.category, r.labels) == ("", "", {})
    assert backend.stats().products == 1


def test_update_fields_touch_only_the_named_fields(backend: CatalogBackend) -> None:
    """update_fields (the API's update_mask): an existing product changes only those fields, and the answer is
    the product as stored; a new product is created with what was given; unknown names change nothing."""
    backend.upsert_product("sku-m", "Milk 1l", "dairy", {"brand": "moo"})
    v0 = backend.version()
    p, created = backend.upsert_product("sku-m", "Milk 1 l", update_fields=["display_name"])
    assert created is False and (p.display_name, p.category, p.labels) == ("Milk 1 l", "dairy", {"brand": "moo"})
    p, _ = backend.upsert_product("sku-m", category="", labels={"brand": "moo2"}, update_fields=("labels",))
    assert (p.display_name, p.category, p.labels) == ("Milk 1 l", "dairy", {"brand": "moo2"})
    p, _ = backend.upsert_product("sku-m", update_fields={"category", "labels"})  # clearing takes the mask
    assert (p.display_name, p.category, p.labels) == ("Milk 1 l", "", {})
    got = backend.get_product("sku-m").product
    assert (got.display_name, got.category, got.labels) == ("Milk 1 l", "", {})
    assert backend.version() > v0
    n, created = backend.upsert_product("sku-n", "New", "cat", {"k": "v"}, update_fields=["display_name"])
    assert created is True and (n.display_name, n.category, n.labels) == ("New", "cat", {"k": "v"})
    before = backend.version()
    for bad in (["name"], ["labels", "sku"], "labels"):
        with pytest.raises(InvalidArgument) as err:
            backend.upsert_product("sku-m", "X", update_fields=bad)  # type: ignore[arg-type]
        assert err.value.field == "update_mask"
    assert backend.version() == before and backend.get_product("sku-m").product.display_name == "Milk 1 l"


def test_create_only_refuses_an_existing_product_and_changes_nothing(backend: CatalogBackend) -> None:
    _, created = backend.upsert_product("sku-co", "Original", "drinks", {"brand": "a"}, create_only=True)
    assert created is True
    version = backend.version()
    with pytest.raises(AlreadyExists) as err:
        backend.upsert_product("sku-co", "Overwritten", "snacks", {"brand": "b"}, create_only=True)
    assert err.value.field == "product_id"
    p = backend.get_product("sku-co").product
    assert (p.display_name, p.category, p.labels) == ("Original", "drinks", {"brand": "a"})
    assert backend.version() == version


def test_get_missing_product_is_not_found(backend: CatalogBackend) -> None:
    backend.upsert_product("present")
    for call in (lambda: backend.get_product("absent"), lambda: backend.delete_product("absent")):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.field == "product_id"


def test_product_ids_are_nfc_normalised(backend: CatalogBackend) -> None:
    nfc, nfd = "caf\u00e9-1", "cafe\u0301-1"
    assert unicodedata.normalize("NFC", nfd) == nfc != nfd
    p, created = backend.upsert_product(nfd, "Café")
    assert created is True and p.product_id == nfc
    _, created = backend.upsert_product(nfc, "Café")
    assert created is False
    assert backend.get_product(nfd).product.product_id == nfc
    assert [x.product_id for x in backend.list_products()[0]] == [nfc]
    v = unit(np.ones(DIM))
    (added,) = backend.add_references(nfd, [NewReference(v, image=b"jpeg")])
    assert added.product_id == nfc
    assert backend.existing_hashes(nfd, [sha(b"jpeg")]) == {sha(b"jpeg"): added.reference_id}
    (res,) = backend.search(v, top_k=1)
    assert res.matches[0].product_id == nfc
    # the length limit applies to the NFC form: 130 characters in NFD, 65 in NFC
    long_nfd = "e\u0301" * 65
    assert backend.upsert_product(long_nfd)[0].product_id == "\u00e9" * 65
    assert backend.delete_product(nfd) == 1
    assert backend.stats().products == 1


@pytest.mark.parametrize("bad", ["", "x" * 129, "a\nb", "a\u200bb", " lead", "trail ", "\u3000", "a\ud800", 42],
                         ids=["empty", "too-long", "control", "format", "leading-space", "trailing-space",
                              "whitespace-only", "surrogate", "not-a-string"])
def test_invalid_product_ids_are_refused_before_anything_is_written(backend: CatalogBackend, bad: Any) -> None:
    backend.upsert_product("x" * 128)  # the longest valid id
    version = backend.version()
    v = unit(np.ones(DIM))
    for call in (lambda: backend.upsert_product(bad), lambda: backend.get_product(bad),
                 lambda: backend.delete_product(bad), lambda: backend.add_references(bad, [NewReference(v)]),
                 lambda: backend.existing_hashes(bad, ["0" * 64])):
        raises_invalid("product_id", call)
    assert backend.version() == version and backend.stats().products == 1


# ================================================================ list_products
# code-point order differs from case-insensitive, locale and UTF-16 orders on these
PAGED_IDS = ["a", "B", "b", "A-1", "a-10", "a-2", "Zebra", "zebra", "\u00e9pi", "e\u00e9", "10", "9", "_x", "~y",
             "\u03a9", "\uff21", "\U0001f34e", "a.b", "a-", "sku-001", "sku-010", "sku-002", "\u00c9"]


def test_list_products_pages_through_everything_in_code_point_order(backend: CatalogBackend) -> None:
    order = list(PAGED_IDS)
    random.Random(3).shuffle(order)  # inserted out of order
    for pid in order:
        backend.upsert_product(pid, f"name {pid}", "a" if PAGED_IDS.index(pid) % 3 == 0 else "b",
                               {"k": pid})
    expected = sorted(PAGED_IDS)  # Python str order = code-point order
    assert len(expected) == 23
    seen, sizes, token = [], [], ""
    while True:
        page, token = backend.list_products(page_size=5, page_token=token)
        seen += [p.product_id for p in page]
        sizes.append(len(page))
        for p in page:
            assert (p.display_name, p.labels, p.reference_count) == (f"name {p.product_id}", {"k": p.product_id}, 0)
        if not token:
            break
        assert len(sizes) < 10, "page tokens do not advance"
    assert seen == expected and sizes == [5, 5, 5, 5, 3]
    # a page that ends exactly at the last product says so: no trailing empty page
    page, token = backend.list_products(page_size=23)
    assert [p.product_id for p in page] == expected and token == ""
    page, token = backend.list_products(page_size=0)  # 0: the default size (100)
    assert [p.product_id for p in page] == expected and token == ""


def test_list_products_category_filter_and_token_binding(backend: CatalogBackend) -> None:
    for i, pid in enumerate(PAGED_IDS):
        backend.upsert_product(pid, category="a" if i % 3 == 0 else "b")
    want_a = sorted(pid for i, pid in enumerate(PAGED_IDS) if i % 3 == 0)
    seen, token = [], ""
    while True:
        page, token = backend.list_products(page_size=2, page_token=token, category="a")
        assert all(p.category == "a" for p in page)
        seen += [p.product_id for p in page]
        if not token:
            break
    assert seen == want_a and len(want_a) == 8
    _, token_a = backend.list_products(page_size=2, category="a")
    assert token_a
    for other in ("b", ""):
        raises_invalid("page_token", lambda other=other: backend.list_products(page_size=2, page_token=token_a,
                                                                                category=other))
    _, token_all = backend.list_products(page_size=2)
    raises_invalid("page_token", lambda: backend.list_products(page_token=token_all, category="a"))
    raises_invalid("page_token", lambda: backend.list_products(page_token="not a token!"))
    assert backend.list_products(category="none-such") == ([], "")
    for size in (-1, backend.settings.max_page_size + 1):
        raises_invalid("page_size", lambda size=size: backend.list_products(page_size=size))


def test_page_token_is_a_cursor_that_survives_deleting_its_product(backend: CatalogBackend) -> None:
    for i in range(10):
        backend.upsert_product(f"p{i}")
    page, token = backend.list_products(page_size=4)
    assert [p.product_id for p in page] == ["p0", "p1", "p2", "p3"]
    backend.delete_product("p3")  # the product the token points after
    backend.upsert_product("p35")  # sorts between p3 and p4
    page, token = backend.list_products(page_size=4, page_token=token)
    assert [p.product_id for p in page] == ["p35", "p4", "p5", "p6"] and token


# ================================================================ references
def test_add_references_in_order_and_reference_count(backend: CatalogBackend) -> None:
    backend.upsert_product("a")
    vecs = unit(np.random.default_rng(0).standard_normal((4, DIM)))
    added = backend.add_references("a", [NewReference(vecs[0], "s0", b"img-0"), NewReference(vecs[1], "s1"),
                                         NewReference(vecs[2], "s2", content_sha256="AB" * 32)])
    assert [(a.product_id, a.duplicate) for a in added] == [("a", False)] * 3
    assert len({a.reference_id for a in added}) == 3
    detail = backend.get_product("a")
    assert detail.product.reference_count == 3
    assert [r.reference_id for r in detail.references] == sorted(a.reference_id for a in added)
    info = {r.reference_id: r for r in detail.references}
    # the result is in input order: each id names the reference made from that input
    assert [(info[a.reference_id].source, info[a.reference_id].content_sha256, info[a.reference_id].has_image)
            for a in added] == [("s0", sha(b"img-0"), True), ("s1", None, False), ("s2", "ab" * 32, False)]
    # the query equal to input 1 finds the id returned for input 1
    (res,) = backend.search(vecs[1], top_k=1)
    assert res.matches[0].reference_id == added[1].reference_id
    more = backend.add_references("a", [NewReference(vecs[3])])
    assert backend.get_product("a").product.reference_count == 4
    assert backend.list_products()[0][0].reference_count == 4
    # no hash and no image: never a duplicate, even with the same vector
    again = backend.add_references("a", [NewReference(vecs[3])])
    assert again[0].duplicate is False and again[0].reference_id != more[0].reference_id
    assert backend.get_product("a").product.reference_count == 5


def test_duplicates_by_content_sha256(backend: CatalogBackend) -> None:
    backend.upsert_product("a")
    backend.upsert_product("b")
    vecs = unit(np.random.default_rng(1).standard_normal((6, DIM)))
    sha_x = "0123456789abcdef" * 4
    r0, r1 = backend.add_references("a", [NewReference(vecs[0], image=b"jpeg-0"),
                                          NewReference(vecs[1], content_sha256=sha_x)])
    version = backend.version()
    # the same image again (hash computed from it), or its hash in upper case: the existing reference
    assert [(x.reference_id, x.duplicate) for x in backend.add_references(
        "a", [NewReference(vecs[2], image=b"jpeg-0"),
              NewReference(vecs[3], content_sha256=sha_x.upper()),
              NewReference(vecs[4], content_sha256=sha(b"jpeg-0").upper())])] == [
        (r0.reference_id, True), (r1.reference_id, True), (r0.reference_id, True)]
    assert backend.version() == version  # nothing written
    assert backend.get_product("a").product.reference_count == 2
    (res,) = backend.search(vecs[2], top_k=1)  # the duplicates' vectors were not stored
    stored = [float(vecs[0] @ vecs[2]), float(vecs[1] @ vecs[2])]
    assert res.matches[0].reference_id == (r0, r1)[int(np.argmax(stored))].reference_id
    assert res.matches[0].score == pytest.approx(max(stored), abs=EPS)
    # a mixed batch, with a repeat inside the batch itself
    new, dup, repeat = backend.add_references("a", [NewReference(vecs[3], image=b"jpeg-new"),
                                                    NewReference(vecs[4], image=b"jpeg-0"),
                                                    NewReference(vecs[5], image=b"jpeg-new")])
    assert (new.duplicate, dup.duplicate, repeat.duplicate) == (False, True, True)
    assert dup.reference_id == r0.reference_id and repeat.reference_id == new.reference_id
    assert backend.get_product("a").product.reference_count == 3
    # the same image for another product is not a duplicate
    (other,) = backend.add_references("b", [NewReference(vecs[0], image=b"jpeg-0")])
    assert other.duplicate is False
    assert other.reference_id not in (r0.reference_id, r1.reference_id, new.reference_id)
    # existing_hashes answers exactly the known hashes of that product, keys in lower case
    unknown = sha(b"never enrolled")
    assert backend.existing_hashes("a", [sha(b"jpeg-0"), sha_x.upper(), unknown, sha(b"jpeg-new")]) == {
        sha(b"jpeg-0"): r0.reference_id, sha_x: r1.reference_id, sha(b"jpeg-new"): new.reference_id}
    assert backend.existing_hashes("b", [sha(b"jpeg-0"), sha_x]) == {sha(b"jpeg-0"): other.reference_id}
    assert backend.existing_hashes("a", [unknown]) == {}
    with pytest.raises(NotFound) as err:
        backend.existing_hashes("ghost", [unknown])
    assert err.value.field == "product_id"
    raises_invalid("content_sha256s[1]", lambda: backend.existing_hashes("a", [unknown, "xyz"]))


def test_existing_hashes_of_a_missing_product_is_not_found_even_for_no_hashes(backend: CatalogBackend) -> None:
    with pytest.raises(NotFound):
        backend.existing_hashes("ghost", [])


def test_references_for_a_missing_product_write_nothing(backend: CatalogBackend) -> None:
    backend.upsert_product("present")
    version = backend.version()
    with pytest.raises(NotFound) as err:
        backend.add_references("ghost", [NewReference(unit(np.ones(DIM)), image=b"x")])
    assert err.value.field == "product_id"
    assert backend.version() == version
    st = backend.stats()
    assert (st.products, st.references) == (1, 0)
    with pytest.raises(NotFound):
        backend.get_product("ghost")  # not created on the way


@pytest.mark.parametrize("at", [0, 1])
def test_a_bad_reference_fails_the_whole_batch(backend_factory: Make, at: int) -> None:
    backend = backend_factory(max_references_per_call=3)
    backend.upsert_product("a")
    (kept,) = backend.add_references("a", [NewReference(unit(np.ones(DIM)))])
    version = backend.version()
    good_vec = unit(np.arange(1, DIM + 1, dtype=np.float32))
    bads = [np.ones(DIM, np.float32),  # not unit-norm
            good_vec[:-1],  # dim - 1
            unit(np.ones(DIM + 1)),  # dim + 1
            np.full(DIM, np.nan, np.float32),
            unit(np.ones((2, DIM)))]  # two vectors for one reference
    for bad in bads:
        refs = [NewReference(good_vec, image=b"good")]
        refs.insert(at, NewReference(bad, image=b"bad"))
        raises_invalid(f"references[{at}].embedding", lambda refs=refs: backend.add_references("a", refs))
    raises_invalid("references", lambda: backend.add_references("a", []))
    raises_invalid("references", lambda: backend.add_references("a", [NewReference(good_vec)] * 4))
    assert backend.version() == version
    assert backend.get_product("a").product.reference_count == 1
    assert backend.existing_hashes("a", [sha(b"good"), sha(b"bad")]) == {}
    assert backend.stats().references == 1
    (res,) = backend.search(good_vec, top_k=1)
    assert res.matches[0].reference_id == kept.reference_id  # the good vector of the batch was not indexed


def test_delete_reference_and_product(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 4, 3, seed=3)
    q = refs[1, 2]
    (res,) = backend.search(q, top_k=1, unknown_threshold=0.5, ambiguity_margin=0.0)
    assert res.matches[0].reference_id == ids["sku-001"][2] and res.matches[0].score == pytest.approx(1, abs=EPS)
    gone = ids["sku-001"].pop(2)
    backend.delete_reference(gone)
    detail = backend.get_product("sku-001")
    assert [r.reference_id for r in detail.references] == sorted(ids["sku-001"])
    assert detail.product.reference_count == 2
    (res,) = backend.search(q, top_k=4)
    refs_left = [refs[i][:2] if i == 1 else refs[i] for i in range(4)]
    expected = sorted(((pid, float(np.max(refs_left[i] @ q)), ids[pid][int(np.argmax(refs_left[i] @ q))])
                       for i, pid in enumerate(ids)), key=lambda t: -t[1])
    assert_matches(res, expected)
    assert gone not in [m.reference_id for m in res.matches]
    for bad_id in (gone, 10**12):
        with pytest.raises(NotFound) as err:
            backend.delete_reference(bad_id)
        assert err.value.field == "reference_id"
    raises_invalid("reference_id", lambda: backend.delete_reference(0))

    assert backend.delete_product("sku-002") == 3
    for call in (lambda: backend.get_product("sku-002"), lambda: backend.delete_product("sku-002"),
                 lambda: backend.add_references("sku-002", [NewReference(refs[2, 0])])):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.field == "product_id"
    (res,) = backend.search(refs[2, 0], top_k=10)
    assert sorted(m.product_id for m in res.matches) == ["sku-000", "sku-001", "sku-003"]
    assert [p.product_id for p in backend.list_products()[0]] == ["sku-000", "sku-001", "sku-003"]
    st = backend.stats()
    assert (st.products, st.references) == (3, 8)
    # the id can be used again: a new, empty product; the old references do not come back
    p, created = backend.upsert_product("sku-002")
    assert created is True and p.reference_count == 0 and backend.get_product("sku-002").references == []
    (res,) = backend.search(refs[2, 0], top_k=10)
    assert "sku-002" not in {m.product_id for m in res.matches}
    backend.upsert_product("empty")
    assert backend.delete_product("empty") == 0


def test_sample_embeddings_draws_live_references_without_repeats(backend: CatalogBackend) -> None:
    empty = backend.sample_embeddings(8)
    assert empty.shape == (0, DIM) and empty.dtype == np.float32
    _, refs, ids = populate(backend, 5, 4, seed=11)
    backend.delete_product("sku-004")
    backend.delete_reference(ids["sku-000"][0])
    live = np.concatenate([refs[0, 1:], refs[1], refs[2], refs[3]])  # 15 live references
    everything = backend.sample_embeddings(100)
    assert everything.shape == (15, DIM) and everything.dtype == np.float32
    # each sampled row is one live reference's stored vector, none twice, the deleted ones never
    nearest = np.argmax(everything @ live.T, axis=1)
    assert sorted(nearest.tolist()) == list(range(15))
    assert np.allclose(everything, live[nearest], atol=EPS)
    some = backend.sample_embeddings(6)
    assert some.shape == (6, DIM)
    assert len(set(np.argmax(some @ live.T, axis=1).tolist())) == 6
    draws = {tuple(np.argmax(backend.sample_embeddings(3) @ live.T, axis=1).tolist()) for _ in range(8)}
    assert len(draws) > 1  # drawn at random, not the first ids every time (8 draws of 3 among 15)
    raises_invalid("limit", lambda: backend.sample_embeddings(0))


def test_version_increases_with_every_write_and_only_then(backend: CatalogBackend) -> None:
    seen = [backend.version()]

    def bumped() -> None:
        now = backend.version()
        assert now > seen[-1]
        seen.append(now)

    def same() -> None:
        assert backend.version() == seen[-1]
        assert backend.stats().version == seen[-1]

    v = unit(np.random.default_rng(2).standard_normal((3, DIM)))
    backend.upsert_product("a", "A")
    bumped()
    backend.upsert_product("a", "A2", "cat", {"k": "v"})
    bumped()
    _, r1 = backend.add_references("a", [NewReference(v[0], image=b"0"), NewReference(v[1])])
    bumped()
    # reads
    backend.get_product("a")
    backend.list_products()
    backend.search(v, top_k=3)
    backend.stats()
    backend.existing_hashes("a", [sha(b"0")])
    same()
    # refused writes and an all-duplicate add write nothing
    for call in (lambda: backend.upsert_product("a", create_only=True),
                 lambda: backend.add_references("ghost", [NewReference(v[2])]),
                 lambda: backend.add_references("a", [NewReference(v[2]), NewReference(v[2] * 2)]),
                 lambda: backend.delete_reference(10**12),
                 lambda: backend.delete_product("ghost"),
                 lambda: backend.upsert_product("")):
        with pytest.raises(CatalogError):
            call()
        same()
    assert backend.add_references("a", [NewReference(v[2], image=b"0")])[0].duplicate
    same()
    backend.delete_reference(r1.reference_id)
    bumped()
    backend.upsert_product("b")
    bumped()
    assert backend.delete_product("a") == 1
    bumped()


# ================================================================ search
def test_search_returns_k_distinct_products_each_by_its_best_reference(backend: CatalogBackend) -> None:
    centres, refs, ids = populate(backend, 12, 5, seed=0)
    rng = np.random.default_rng(1)
    queries = np.stack([unit(refs[3, 2] + 0.01 * rng.standard_normal(DIM)),
                        unit(refs[7, 4] + 0.3 * rng.standard_normal(DIM) / np.sqrt(DIM)),
                        centres[0], unit(rng.standard_normal(DIM))])
    results = backend.search(queries, top_k=4)
    assert len(results) == 4  # one per query, in order
    for q, res in zip(queries, results, strict=True):
        expected = ranking(q, refs, ids)[:4]
        assert_matches(res, expected)
        assert len({m.product_id for m in res.matches}) == 4
        assert res.best_score == pytest.approx(expected[0][1], abs=EPS)
    assert results[0].matches[0].product_id == "sku-003"
    assert results[0].matches[0].reference_id == ids["sku-003"][2]  # the product's best reference
    assert results[0].matches[0].display_name == "Product 3"
    (one,) = backend.search(queries[1], top_k=1)  # a [dim] vector is one query
    assert_matches(one, ranking(queries[1], refs, ids)[:1])
    (everything,) = backend.search(queries[2], top_k=50)  # more than there are: all products
    assert_matches(everything, ranking(queries[2], refs, ids))
    assert backend.search(np.zeros((0, DIM), np.float32)) == []


def test_min_score_floors_the_matches_not_the_best_score(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 12, 3, seed=4)
    q = unit(refs[5, 0] + 0.5 * np.random.default_rng(2).standard_normal(DIM) / np.sqrt(DIM))
    expected = ranking(q, refs, ids)
    floor = (expected[1][1] + expected[2][1]) / 2
    (res,) = backend.search(q, top_k=5, min_score=floor)
    assert_matches(res, expected[:2])
    assert res.best_score == pytest.approx(expected[0][1], abs=EPS)
    above = (expected[0][1] + 1.0) / 2
    (res,) = backend.search(q, top_k=5, min_score=above)
    assert res.matches == [] and res.best_score == pytest.approx(expected[0][1], abs=EPS)
    (res,) = backend.search(q, top_k=5, min_score=-1.0)
    assert_matches(res, expected[:5])
    raises_invalid("min_score", lambda: backend.search(q, min_score=1.5))


def _rare(i: int) -> str:
    return "\u00e9picerie" if i in (7, 29, 51) else ("even" if i % 2 == 0 else "odd")


def _tags(i: int) -> dict[str, str]:
    return {"brand": f"b{i % 3}", "tier": "gold" if i in (4, 33, 58) else "std"}


def test_filters_return_only_matching_products_and_still_k_of_them(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 60, 4, seed=1, category=_rare, labels=_tags)
    nfd_rare = unicodedata.normalize("NFD", "\u00e9picerie")
    for qi in (0, 10):  # query on a product that no filter keeps: its neighbours are all filtered out
        q = unit(refs[qi, 0] + refs[qi, 1])
        cases: list[tuple[dict[str, Any], Callable[[int], bool]]] = [
            ({"category": nfd_rare}, lambda i: i in (7, 29, 51)),  # 3 of 60 products, 12 of 240 references
            ({"labels": {"tier": "gold"}}, lambda i: i in (4, 33, 58)),
            ({"labels": {"tier": "gold", "brand": "b0"}}, lambda i: i == 33),  # every pair must match
            ({"category": "even", "labels": {"tier": "gold"}}, lambda i: i in (4, 58)),
            ({"category": "odd", "labels": {"brand": "b1"}}, lambda i: i % 2 == 1 and i % 3 == 1 and i not in
             (7, 29, 51)),
        ]
        for filters, keep in cases:
            (res,) = backend.search(q, top_k=3, unknown_threshold=-1.0, ambiguity_margin=0.0, **filters)
            expected = ranking(q, refs, ids, keep)[:3]
            assert_matches(res, expected)
            assert res.verdict is Verdict.KNOWN  # decided among the filtered products only
            assert res.best_score == pytest.approx(expected[0][1], abs=EPS)
    (res,) = backend.search(refs[29, 0], top_k=3, category="\u00e9picerie", unknown_threshold=0.5,
                            ambiguity_margin=0.02)
    assert res.matches[0].product_id == "sku-029" and res.verdict is Verdict.KNOWN
    for filters in ({"category": "none-such"}, {"labels": {"tier": "none-such"}},
                    {"category": "\u00e9picerie", "labels": {"tier": "gold"}}):
        assert backend.search(refs[0, 0], top_k=3, **filters) == [SearchResult([], Verdict.UNKNOWN, -1.0, [])]


def test_filters_follow_replaced_and_deleted_products(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 6, 2, seed=5, category=lambda i: "drinks", labels=lambda i: {"brand": "x"})
    q = refs[2, 0]
    backend.upsert_product("sku-002", "Renamed", "snacks", {"brand": "y"})
    (res,) = backend.search(q, top_k=6, category="drinks")
    assert "sku-002" not in [m.product_id for m in res.matches] and len(res.matches) == 5
    (res,) = backend.search(q, top_k=6, labels={"brand": "x"})
    assert "sku-002" not in [m.product_id for m in res.matches] and len(res.matches) == 5
    for filters in ({"category": "snacks"}, {"labels": {"brand": "y"}}):
        (res,) = backend.search(q, top_k=6, **filters)
        assert [(m.product_id, m.display_name, m.reference_id) for m in res.matches] == [
            ("sku-002", "Renamed", ids["sku-002"][0])]
    backend.delete_reference(ids["sku-003"][0])  # a deleted reference of a product the filter keeps
    (res,) = backend.search(refs[3, 0], top_k=6, category="drinks")
    assert [m.reference_id for m in res.matches if m.product_id == "sku-003"] == [ids["sku-003"][1]]
    backend.delete_product("sku-002")
    assert backend.search(q, top_k=6, category="snacks")[0].matches == []
    backend.upsert_product("sku-002", category="snacks")  # same id again, no references
    assert backend.search(q, top_k=6, category="snacks")[0].matches == []


def test_verdicts_known_unknown_ambiguous(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 10, 3, seed=2)
    rng = np.random.default_rng(7)
    twin = unit(refs[4] + 0.02 * rng.standard_normal((3, DIM)))  # nearly the same product as sku-004
    backend.upsert_product("twin", "Twin of 4")
    twin_ids = [a.reference_id for a in backend.add_references("twin", [NewReference(t) for t in twin])]
    all_refs = np.concatenate([refs, twin[None]])
    all_ids = {**ids, "twin": twin_ids}

    # KNOWN: a query equal to a reference of a product nothing resembles
    q = refs[7, 1]
    expected = ranking(q, all_refs, all_ids)
    assert expected[1][1] < 1 - 0.02
    (res,) = backend.search(q, top_k=3, unknown_threshold=0.5, ambiguity_margin=0.02)
    assert res.verdict is Verdict.KNOWN and res.confusable == []
    assert res.matches[0].reference_id == ids["sku-007"][1]
    assert res.matches[0].score == pytest.approx(1.0, abs=EPS) and res.best_score == pytest.approx(1.0, abs=EPS)
    assert_matches(res, expected[:3])

    # UNKNOWN: far from everything, with a high threshold; the matches still come back
    far = unit(rng.standard_normal(DIM))
    expected = ranking(far, all_refs, all_ids)
    assert expected[0][1] < 0.9
    (res,) = backend.search(far, top_k=3, unknown_threshold=0.9, ambiguity_margin=0.02)
    assert res.verdict is Verdict.UNKNOWN and res.confusable == []
    assert_matches(res, expected[:3])
    assert res.best_score == pytest.approx(expected[0][1], abs=EPS)

    # AMBIGUOUS: the runner-up is (strictly) within the margin; confusable = best and those, best first
    q = refs[4, 1]
    expected = ranking(q, all_refs, all_ids)
    gap = expected[0][1] - expected[1][1]
    assert [p for p, _, _ in expected[:2]] == ["sku-004", "twin"] and 0.001 < gap < 0.05
    assert expected[0][1] - expected[2][1] > 0.3
    for top_k in (3, 1):  # the verdict looks past top_k for the runner-up
        (res,) = backend.search(q, top_k=top_k, unknown_threshold=0.5, ambiguity_margin=0.05)
        assert res.verdict is Verdict.AMBIGUOUS and res.confusable == ["sku-004", "twin"]
        assert_matches(res, expected[:top_k])
    (res,) = backend.search(q, top_k=1, unknown_threshold=0.5, ambiguity_margin=gap / 2)
    assert res.verdict is Verdict.KNOWN and res.confusable == []
    (res,) = backend.search(q, top_k=1, unknown_threshold=0.5, ambiguity_margin=0.0)  # strictly closer
    assert res.verdict is Verdict.KNOWN
    # below the threshold wins over ambiguity
    (res,) = backend.search(unit(refs[4, 1] + 0.6 * rng.standard_normal(DIM) / np.sqrt(DIM)), top_k=2,
                            unknown_threshold=0.999, ambiguity_margin=0.05)
    assert res.verdict is Verdict.UNKNOWN and res.confusable == []
    raises_invalid("ambiguity_margin", lambda: backend.search(q, ambiguity_margin=3.0))
    raises_invalid("unknown_threshold", lambda: backend.search(q, unknown_threshold=2.0))


def test_search_thresholds_default_to_the_settings(backend_factory: Make) -> None:
    strict = backend_factory(unknown_threshold=0.999, ambiguity_margin=0.0)
    loose = backend_factory(unknown_threshold=0.5, ambiguity_margin=1.0)
    for b in (strict, loose):
        _, refs, ids = populate(b, 6, 2, seed=6)
    q = unit(refs[3, 0] + 0.6 * np.random.default_rng(3).standard_normal(DIM) / np.sqrt(DIM))
    expected = ranking(q, refs, ids)
    assert expected[0][0] == "sku-003" and 0.5 < expected[0][1] < 0.999
    assert expected[0][1] - expected[1][1] < 1.0
    # the same catalog content, the same query: each backend's own settings decide
    (res,) = strict.search(q, top_k=2)
    assert res.verdict is Verdict.UNKNOWN
    (res,) = strict.search(q, top_k=2, unknown_threshold=0.5)
    assert res.verdict is Verdict.KNOWN
    (res,) = loose.search(q, top_k=2)
    assert res.verdict is Verdict.AMBIGUOUS and res.confusable[0] == "sku-003"
    (res,) = loose.search(q, top_k=2, ambiguity_margin=0.0)
    assert res.verdict is Verdict.KNOWN


def test_empty_catalog_search(backend: CatalogBackend) -> None:
    rng = np.random.default_rng(0)
    queries = unit(rng.standard_normal((2, DIM)))
    nothing = [SearchResult([], Verdict.UNKNOWN, -1.0, [])] * 2
    assert backend.search(queries, top_k=3) == nothing
    assert backend.search(np.zeros((0, DIM), np.float32)) == []
    backend.upsert_product("no-refs", category="c")
    assert backend.search(queries, top_k=3) == nothing
    assert backend.search(queries, top_k=3, category="c") == nothing
    (r,) = backend.add_references("no-refs", [NewReference(queries[0])])
    backend.delete_reference(r.reference_id)
    assert backend.search(queries, top_k=3) == nothing


def test_search_argument_checks(backend_factory: Make) -> None:
    backend = backend_factory(max_top_k=10)
    populate(backend, 2, 1)
    ok = unit(np.ones(DIM))
    for bad in (unit(np.ones((2, DIM + 1))), unit(np.ones(DIM - 1)), np.ones((2, DIM), np.float32),
                np.full((1, DIM), np.nan, np.float32), np.ones((2, 2, DIM), np.float32) / np.sqrt(DIM)):
        raises_invalid("queries", lambda bad=bad: backend.search(bad))
    for k in (0, 11):
        raises_invalid("top_k", lambda k=k: backend.search(ok, top_k=k))
    assert len(backend.search(ok, top_k=10)[0].matches) == 2


# ================================================================ stats
def test_stats_are_consistent_with_what_was_written(backend_factory: Make) -> None:
    backend = backend_factory(dim=16, fingerprint="stats-model/16:abcd")
    v = unit(np.random.default_rng(4).standard_normal((5, 16)))
    backend.upsert_product("p1")
    backend.upsert_product("p2")
    backend.upsert_product("p3")
    backend.add_references("p1", [NewReference(v[0], image=b"i0"), NewReference(v[1], image=b"i1"),
                                  NewReference(v[2])])
    backend.add_references("p2", [NewReference(v[3], image=b"i3")], store_images=False)
    backend.add_references("p2", [NewReference(v[4], image=b"i4")], store_images=True)
    assert [r.has_image for r in backend.get_product("p1").references] == [True, True, False]
    assert [r.has_image for r in backend.get_product("p2").references] == [False, True]
    # the hash is kept even when the image is not
    no_image = backend.get_product("p2").references[0]
    assert no_image.content_sha256 == sha(b"i3")
    assert backend.existing_hashes("p2", [sha(b"i3")]) == {sha(b"i3"): no_image.reference_id}
    st = backend.stats()
    assert (st.products, st.references, st.references_with_image) == (3, 5, 3)
    assert (st.dim, st.fingerprint, st.version) == (16, "stats-model/16:abcd", backend.version())
    assert isinstance(st.index_kind, str) and st.index_kind
    assert isinstance(st.backend, str) and st.backend
    assert backend.delete_product("p1") == 3
    st = backend.stats()
    assert (st.products, st.references, st.references_with_image) == (2, 2, 1)
    assert st.version == backend.version()


def test_store_images_setting_is_the_default(backend_factory: Make) -> None:
    backend = backend_factory(store_images=False)
    backend.upsert_product("a")
    v = unit(np.random.default_rng(5).standard_normal((2, DIM)))
    backend.add_references("a", [NewReference(v[0], image=b"x")])
    backend.add_references("a", [NewReference(v[1], image=b"y")], store_images=True)
    assert [r.has_image for r in backend.get_product("a").references] == [False, True]
    assert backend.stats().references_with_image == 1


# ================================================================ close
def test_close_is_idempotent_and_later_calls_raise_closed(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 2, 2)
    rid = ids["sku-000"][0]
    backend.close()
    backend.close()
    calls: list[Callable[[], object]] = [
        backend.version, backend.stats,
        lambda: backend.upsert_product("x"), lambda: backend.get_product("sku-000"),
        lambda: backend.list_products(), lambda: backend.delete_product("sku-000"),
        lambda: backend.add_references("sku-000", [NewReference(refs[0, 0])]),
        lambda: backend.existing_hashes("sku-000", ["0" * 64]), lambda: backend.delete_reference(rid),
        lambda: backend.search(refs[0, 0]),
    ]
    for call in calls:
        with pytest.raises(CatalogClosed):
            call()
    assert issubclass(CatalogClosed, CatalogError)


# ================================================================ model migration (two spaces side by side)
CAND = "candidate-model/random/16:fedcba9876543210"
CDIM = 16


def _candidate_vectors(b: CatalogBackend, refs: np.ndarray, ids: dict[str, list[int]]) -> dict[int, np.ndarray]:
    """A deterministic 'candidate model': each reference's vector in the 16-d space (first 16 values, renormed)."""
    out = {}
    for i, pid in enumerate(ids):
        for j, rid in enumerate(ids[pid]):
            out[rid] = unit(refs[i, j, :CDIM])
    return out


def test_migration_fills_a_second_space_searches_it_and_switches_atomically(backend: CatalogBackend) -> None:
    from skulens.catalog.migration_state import ModelSpace

    _, refs = product_refs(6, 2, DIM, seed=3)
    ids: dict[str, list[int]] = {}
    for i in range(6):  # with images, so that the back-fill has something to read
        pid = f"sku-{i:03d}"
        backend.upsert_product(pid)
        ids[pid] = [a.reference_id for a in backend.add_references(
            pid, [NewReference(refs[i, j], image=f"{pid}/{j}".encode()) for j in range(2)], store_images=True)]
    assert backend.migration_state().phase == "none"
    v0 = backend.version()
    state = backend.start_migration(ModelSpace(CAND, CDIM, "/models/cand"), shadow_share=0.25)
    assert (state.phase, state.candidate, state.shadow_share) == ("candidate", ModelSpace(CAND, CDIM, "/models/cand"),
                                                                 0.25)
    assert backend.version() > v0
    assert backend.migration_state() == state
    assert backend.start_migration(ModelSpace(CAND, CDIM, "/models/cand"), shadow_share=0.5).shadow_share == 0.5
    with pytest.raises(CatalogError) as err:  # another candidate while one runs
        backend.start_migration(ModelSpace("third/8:00", 8))
    assert type(err.value).__name__ == "MigrationError"

    cand = _candidate_vectors(backend, refs, ids)
    progress = backend.space_progress(CAND)
    assert (progress.live, progress.embedded, progress.pending) == (12, 0, 12)
    pending = backend.pending_references(CAND, limit=5)
    assert [p.reference_id for p in pending] == sorted(cand)[:5]
    assert pending[0].image == b"sku-000/0"
    with pytest.raises(CatalogError):  # not complete: the switch refuses and changes nothing
        backend.switch_model(CAND)
    assert backend.fingerprint == FP

    first = sorted(cand)[:7]
    assert backend.put_space_embeddings(CAND, first, np.stack([cand[r] for r in first])) == 7
    assert backend.put_space_embeddings(CAND, first[:2], np.stack([cand[r] for r in first[:2]])) == 0  # idempotent
    assert [p.reference_id for p in backend.pending_references(CAND, after=0, limit=100)] == sorted(cand)[7:]

    # an enrolment during the migration carries both vectors; a delete removes from both spaces
    backend.upsert_product("late", "Late")
    late_vec = unit(np.arange(DIM, dtype=np.float32) + 1)
    late_cand = unit(late_vec[:CDIM])
    late = backend.add_references("late", [NewReference(late_vec, image=b"late-img",
                                                        space_embeddings={CAND: late_cand})],
                                  store_images=True)[0].reference_id
    cand[late] = late_cand
    gone = ids["sku-005"][0]
    backend.delete_reference(gone)
    del cand[gone]
    rest = [r for r in sorted(cand) if r not in first and r != late]
    backend.put_space_embeddings(CAND, rest, np.stack([cand[r] for r in rest]))
    assert backend.space_progress(CAND).complete

    # the candidate space answers exactly (nearest product in the 16-d space), the serving one is unchanged
    q = cand[ids["sku-002"][1]]
    hit = backend.search(q[None], top_k=1, space=CAND)[0].matches[0]
    assert (hit.product_id, hit.reference_id) == ("sku-002", ids["sku-002"][1])
    assert hit.score == pytest.approx(1.0, abs=EPS)
    assert backend.search(refs[2, 1][None], top_k=1)[0].matches[0].reference_id == ids["sku-002"][1]
    assert backend.search(late_cand[None], top_k=1, space=CAND)[0].matches[0].product_id == "late"

    v1 = backend.version()
    state = backend.switch_model(CAND)
    assert (state.serving.fingerprint, state.previous, state.phase) == (CAND, ModelSpace(FP, DIM), "switched")
    assert (backend.fingerprint, backend.dim) == (CAND, CDIM)
    assert backend.version() > v1
    assert backend.switch_model(CAND) == state  # a retried switch changes nothing
    assert backend.search(q[None], top_k=1)[0].matches[0].reference_id == ids["sku-002"][1]
    assert backend.search(refs[2, 1][None], top_k=1, space=FP)[0].matches[0].reference_id == ids["sku-002"][1]
    assert backend.stats().fingerprint == CAND

    # writes after the switch: serving vector in the new space, the old model's in the previous one
    added = backend.add_references("late", [NewReference(late_cand[::-1].copy(), image=b"late-2",
                                                         space_embeddings={FP: late_vec[::-1].copy()})])
    assert backend.space_progress(FP).complete
    back = backend.switch_model(FP)  # undo
    assert (back.serving.fingerprint, back.previous.fingerprint if back.previous else None) == (FP, CAND)
    assert backend.search(late_vec[::-1].copy()[None], top_k=1)[0].matches[0].reference_id == added[0].reference_id
    backend.switch_model(CAND)
    done = backend.finish_migration()
    assert (done.phase, done.serving.fingerprint) == ("none", CAND)
    assert backend.finish_migration() == done  # idempotent
    with pytest.raises(CatalogError):
        backend.search(refs[2, 1][None], top_k=1, space=FP)
    assert backend.search(q[None], top_k=1)[0].matches[0].reference_id == ids["sku-002"][1]


def test_migration_abort_drops_the_candidate_and_refuses_the_wrong_steps(backend: CatalogBackend) -> None:
    from skulens.catalog.migration_state import ModelSpace

    populate(backend, 2, 1)
    with pytest.raises(InvalidArgument):
        backend.start_migration(ModelSpace(FP, DIM))  # the serving model itself
    with pytest.raises(CatalogError):
        backend.switch_model(CAND)  # nothing to switch to
    assert backend.abort_migration().phase == "none"  # nothing running: idempotent
    backend.start_migration(ModelSpace(CAND, CDIM))
    with pytest.raises(CatalogError):
        backend.finish_migration()  # not switched
    with pytest.raises(CatalogError):
        backend.put_space_embeddings("third/8:00", [1], unit(np.ones((1, 8))))
    with pytest.raises(InvalidArgument):
        backend.put_space_embeddings(CAND, [1], unit(np.ones((1, CDIM + 1))))
    state = backend.abort_migration()
    assert state.phase == "none" and backend.migration_state().phase == "none"
    with pytest.raises(CatalogError):
        backend.search(unit(np.ones((1, CDIM))), space=CAND)
    backend.start_migration(ModelSpace(CAND, CDIM))  # a fresh start after an abort begins empty
    assert backend.space_progress(CAND).embedded == 0


def test_backfill_lease_is_exclusive(backend: CatalogBackend) -> None:
    with backend.backfill_lease() as first:
        assert first
        with backend.backfill_lease() as second:
            assert not second
    with backend.backfill_lease() as again:
        assert again


def test_regions_are_stored_and_part_of_the_duplicate_identity(backend: CatalogBackend) -> None:
    backend.upsert_product("shelf")
    img = b"one-photo-of-a-shelf"
    vecs = unit(np.random.default_rng(5).standard_normal((4, DIM)))
    added = backend.add_references("shelf", [
        NewReference(vecs[0], image=img),
        NewReference(vecs[1], image=img, region=(0, 0, 10, 20)),
        NewReference(vecs[2], image=img, region=(5, 0, 10, 20)),
        NewReference(vecs[3], image=img, region=(0, 0, 10, 20)),  # the same crop again in this call
    ], store_images=True)
    assert [a.duplicate for a in added] == [False, False, False, True]
    assert added[3].reference_id == added[1].reference_id
    again = backend.add_references("shelf", [NewReference(vecs[2], image=img, region=(5, 0, 10, 20))])
    assert again[0].duplicate and again[0].reference_id == added[2].reference_id
    refs = backend.get_product("shelf").references
    assert [r.region for r in refs] == [None, (0, 0, 10, 20), (5, 0, 10, 20)]
    assert backend.existing_hashes("shelf", [sha(img)]) == {sha(img): added[0].reference_id}  # whole image only
    exported = backend.export_references()
    assert [e.region for e in exported] == [None, (0, 0, 10, 20), (5, 0, 10, 20)]
    raises_invalid("references[0].region", lambda: backend.add_references(
        "shelf", [NewReference(vecs[0], image=img, region=(0, 0, 0, 5))]))
    from skulens.catalog.migration_state import ModelSpace

    backend.start_migration(ModelSpace(CAND, CDIM))
    assert [p.region for p in backend.pending_references(CAND)] == [None, (0, 0, 10, 20), (5, 0, 10, 20)]


def test_etags_guard_product_writes(backend: CatalogBackend) -> None:
    from skulens.catalog.errors import EtagMismatch

    p, _ = backend.upsert_product("oat", "Oat drink", "drinks", {"brand": "x"})
    assert p.etag and backend.get_product("oat").product.etag == p.etag  # the same tag on read
    v0 = backend.version()
    with pytest.raises(EtagMismatch) as err:
        backend.upsert_product("oat", "Other", expected_etag="0" * 24)
    assert err.value.field == "etag" and backend.version() == v0  # nothing written
    q, created = backend.upsert_product("oat", "Oat drink 1 l", update_fields=["display_name"], expected_etag=p.etag)
    assert not created and q.display_name == "Oat drink 1 l" and q.etag != p.etag
    assert backend.get_product("oat").product.etag == q.etag
    with pytest.raises(EtagMismatch):  # the old tag is stale now: a lost update is refused
        backend.upsert_product("oat", "Stale write", expected_etag=p.etag)
    with pytest.raises(NotFound):
        backend.upsert_product("missing", expected_etag=p.etag)
    with pytest.raises(EtagMismatch):
        backend.delete_product("oat", expected_etag=p.etag)
    assert backend.delete_product("oat", expected_etag=q.etag) == 0
    with pytest.raises(NotFound):
        backend.get_product("oat")


def test_request_ids_answer_a_retry_with_the_original_reference(backend: CatalogBackend) -> None:
    """AIP-155: a request id is remembered with the reference it added, as long as that lives. A retry answers
    that reference (replayed: not a duplicate, nothing written); the same id for another content, region or
    product is refused (RequestIdReused naming the item, the whole call written or not at all); a deleted reference
    forgets its id."""
    from skulens.catalog.errors import RequestIdReused

    backend.upsert_product("oat")
    backend.upsert_product("rye")
    rid, rid2, rid3 = ("0F8E2B4C-1D2A-4B3C-8D9E-0A1B2C3D4E5F", "1f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5f",
                       "2f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5f")
    vecs = unit(np.random.default_rng(9).standard_normal((5, DIM)))
    first = backend.add_references("oat", [NewReference(vecs[0], image=b"photo-1", request_id=rid)])[0]
    assert (first.duplicate, first.replayed) == (False, False)
    found = backend.requested_references([rid.lower(), rid2, ""])
    assert list(found) == [rid.lower()]  # stored in lower case; unknown and empty ids are absent
    got = found[rid.lower()]
    assert (got.reference_id, got.product_id, got.content_sha256, got.region) == (
        first.reference_id, "oat", sha(b"photo-1"), None)
    v0 = backend.version()
    # the retry (another vector: a re-embedding must not matter) answers the original; the call's new item is added
    again = backend.add_references("oat", [NewReference(vecs[1], image=b"photo-1", request_id=rid.lower()),
                                           NewReference(vecs[2], image=b"photo-2")])
    assert [(a.reference_id, a.duplicate, a.replayed) for a in again[:1]] == [(first.reference_id, False, True)]
    assert not again[1].replayed and backend.version() > v0
    assert len(backend.get_product("oat").references) == 2
    v1 = backend.version()
    assert backend.add_references("oat", [NewReference(vecs[1], image=b"photo-1", request_id=rid)])[0].replayed
    assert backend.version() == v1  # a replay alone writes nothing
    for pid, ref in (("oat", NewReference(vecs[3], image=b"photo-3", request_id=rid)),
                     ("oat", NewReference(vecs[3], image=b"photo-1", region=(0, 0, 8, 8), request_id=rid)),
                     ("rye", NewReference(vecs[3], image=b"photo-1", request_id=rid))):
        with pytest.raises(RequestIdReused) as err:
            backend.add_references(pid, [NewReference(vecs[4], image=b"photo-4"), ref])
        assert err.value.field == "references[1].request_id"
        assert f"added reference {first.reference_id} (product 'oat'" in err.value.message
    assert backend.version() == v1 and len(backend.get_product("oat").references) == 2  # all or nothing
    assert not backend.get_product("rye").references
    # within one call: one id twice for one image is one reference; for two images it is refused
    both = backend.add_references("rye", [NewReference(vecs[0], image=b"rye-1", request_id=rid2),
                                          NewReference(vecs[0], image=b"rye-1", request_id=rid2)])
    assert both[1].reference_id == both[0].reference_id
    assert [(b.duplicate, b.replayed) for b in both] == [(False, False), (False, True)]
    with pytest.raises(RequestIdReused) as err:
        backend.add_references("rye", [NewReference(vecs[1], image=b"rye-2", request_id=rid3),
                                       NewReference(vecs[2], image=b"rye-3", request_id=rid3)])
    assert err.value.field == "references[1].request_id"
    raises_invalid("references[0].request_id", lambda: backend.add_references(
        "oat", [NewReference(vecs[0], image=b"x", request_id="not-a-uuid")]))
    raises_invalid("references[0].request_id", lambda: backend.add_references(  # no content to remember it with
        "oat", [NewReference(vecs[0], request_id=rid3)]))
    raises_invalid("request_ids[1]", lambda: backend.requested_references([rid, "nope"]))
    # a deleted reference (or product) forgets its request id: the same message again adds a new reference
    backend.delete_reference(first.reference_id)
    assert backend.requested_references([rid]) == {}
    fresh = backend.add_references("oat", [NewReference(vecs[0], image=b"photo-1", request_id=rid)])[0]
    assert not fresh.replayed and not fresh.duplicate and fresh.reference_id != first.reference_id
    backend.delete_product("rye")
    assert backend.requested_references([rid2]) == {}


# ================================================================ catalog-adapted matching statistics
def assert_head_stats_equal_scratch(backend: CatalogBackend, vectors: dict[str, list[np.ndarray]],
                                    views: dict[str, list[np.ndarray]] | None = None) -> None:
    """The incrementally kept statistics equal those computed from the live references (`vectors`) and their
    augmented views (`views`)."""
    from skulens.catalog.head import HeadStats

    live = [(pid, v, 1) for pid, vs in vectors.items() for v in vs]
    live += [(pid, v, 0) for pid, vs in (views or {}).items() for v in vs]
    got = backend.head_statistics()
    assert got.fingerprint == backend.fingerprint and got.version == backend.version()
    want = HeadStats.from_embeddings(backend.fingerprint, [p for p, _, _ in live],
                                     np.stack([v for _, v, _ in live]) if live else np.zeros((0, backend.dim)),
                                     references=[r for _, _, r in live])
    assert got.count == want.count
    np.testing.assert_allclose(got.total, want.total, atol=1e-9)
    np.testing.assert_allclose(got.gram, want.gram, atol=1e-9)
    assert sorted(got.products) == sorted(want.products)
    for pid, sums in want.products.items():
        assert (got.products[pid].count, got.products[pid].references) == (sums.count, sums.references)
        np.testing.assert_allclose(got.products[pid].total, sums.total, atol=1e-9)


def test_head_statistics_follow_every_write(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 4, 3, seed=5)
    vectors = {pid: [refs[i, j].astype(np.float64) for j in range(3)] for i, pid in enumerate(ids)}
    assert_head_stats_equal_scratch(backend, vectors)
    backend.delete_reference(ids["sku-001"][1])  # one reference
    vectors["sku-001"].pop(1)
    assert_head_stats_equal_scratch(backend, vectors)
    backend.delete_product("sku-002")  # a product and all its references
    vectors["sku-002"] = []
    assert_head_stats_equal_scratch(backend, vectors)
    extra = unit(np.random.default_rng(9).standard_normal((2, backend.dim)))
    backend.add_references("sku-003", [NewReference(extra[0]), NewReference(extra[1])])
    vectors["sku-003"] += [extra[0].astype(np.float64), extra[1].astype(np.float64)]
    assert_head_stats_equal_scratch(backend, vectors)
    backend.upsert_product("sku-002", "Product 2 again")  # a deleted id created again starts empty
    assert_head_stats_equal_scratch(backend, vectors)


def test_head_statistics_move_to_the_new_model_at_a_switch(backend: CatalogBackend) -> None:
    from skulens.catalog.migration_state import ModelSpace

    _, _, ids = populate(backend, 3, 2, seed=6)
    backend.start_migration(ModelSpace(CAND, CDIM))
    cand: dict[str, list[np.ndarray]] = {}
    rng = np.random.default_rng(4)
    for pid, rids in ids.items():
        vecs = unit(rng.standard_normal((len(rids), CDIM)))
        backend.put_space_embeddings(CAND, rids, vecs)
        cand[pid] = [v.astype(np.float64) for v in vecs]
    backend.switch_model(CAND)
    assert backend.fingerprint == CAND
    assert_head_stats_equal_scratch(backend, cand)


def test_verdict_thresholds_are_stored_per_matching_mode_and_model(backend: CatalogBackend) -> None:
    from skulens.catalog.thresholds import VerdictThresholds, pick

    assert backend.verdict_thresholds() == []
    v0 = backend.version()
    a = VerdictThresholds("adapted", FP, 0.61, 0.03, "calibrate --labelled: 10 photos", 1.0)
    assert backend.verdict_thresholds() == [] and backend.set_verdict_thresholds(a) == [a]
    assert backend.version() > v0  # a write like any other
    n = VerdictThresholds("nearest", FP, 0.72, 0.02)
    backend.set_verdict_thresholds(n)
    a2 = VerdictThresholds("adapted", FP, 0.58, 0.04)
    stored = backend.set_verdict_thresholds(a2)  # replaces the adapted entry of this model, keeps the other
    assert sorted(stored, key=lambda e: e.matching) == [a2, n]
    assert pick(backend.verdict_thresholds(), "adapted", FP) == a2
    assert pick(backend.verdict_thresholds(), "adapted", "other-model") is None
    with pytest.raises(InvalidArgument):
        VerdictThresholds("adapted", FP, 1.5, 0.02)
    with pytest.raises(InvalidArgument):
        VerdictThresholds("fancy", FP, 0.5, 0.02)


def test_augmented_views_of_small_products_count_in_the_statistics(backend: CatalogBackend) -> None:
    rng = np.random.default_rng(11)
    img = b"\x89PNG fake image bytes"
    backend.upsert_product("small", "One packshot")
    backend.upsert_product("big", "Many photos")
    [s0] = backend.add_references("small", [NewReference(unit(rng.standard_normal(backend.dim)), image=img)])
    big = backend.add_references("big", [NewReference(unit(rng.standard_normal(backend.dim)), image=img + bytes([i]))
                                         for i in range(3)])
    vectors = {"small": [], "big": []}  # type: dict[str, list[np.ndarray]]
    for pid, added in (("small", [s0]), ("big", big)):
        for a in added:
            vectors[pid] += [e.embedding.astype(np.float64) for e in backend.export_references(a.reference_id - 1, 1)]
    pending = backend.augmentation_pending(below=3)
    assert [p.reference_id for p in pending] == [s0.reference_id] and pending[0].image == img
    assert backend.augmentation_counts(below=3) == (1, 0)
    views = unit(rng.standard_normal((4, backend.dim)))
    v0 = backend.version()
    assert backend.put_augmentations(s0.reference_id, views) == 4
    assert backend.version() > v0
    assert backend.put_augmentations(s0.reference_id, views) == 0  # once per reference
    assert backend.augmentation_pending(below=3) == [] and backend.augmentation_counts(below=3) == (0, 1)
    assert_head_stats_equal_scratch(backend, vectors, {"small": [v.astype(np.float64) for v in views]})
    assert backend.head_statistics().products["small"].references == 1
    raises_invalid("vectors", lambda: backend.put_augmentations(s0.reference_id, views * 2))  # not unit rows
    # the product grows past the limit: its views are pruned (a second prune finds nothing)
    more = backend.add_references("small", [NewReference(unit(rng.standard_normal(backend.dim)), image=img + b"x%d" % i)
                                            for i in range(2)])
    for a in more:
        vectors["small"] += [e.embedding.astype(np.float64) for e in backend.export_references(a.reference_id - 1, 1)]
    assert backend.prune_augmentations(below=3) == 4 and backend.prune_augmentations(below=3) == 0
    assert_head_stats_equal_scratch(backend, vectors)
    # a deleted reference takes its views with it
    backend.upsert_product("tiny", "Tiny")
    [t0] = backend.add_references("tiny", [NewReference(unit(rng.standard_normal(backend.dim)), image=b"tiny")])
    assert backend.put_augmentations(t0.reference_id, views) == 4
    backend.delete_reference(t0.reference_id)
    assert_head_stats_equal_scratch(backend, vectors)
    assert backend.put_augmentations(t0.reference_id, views) == 0  # gone


def test_purge_deleted_keeps_deleted_invisible_and_live_untouched(backend: CatalogBackend) -> None:
    _, refs, ids = populate(backend, 4, 3, seed=5)
    backend.delete_reference(ids["sku-000"][1])
    assert backend.delete_product("sku-001") == 3
    backend.upsert_product("sku-001")  # the id again: a new, empty product
    before = (backend.version(), backend.stats(), [backend.get_product(p) for p in ("sku-000", "sku-002", "sku-003")],
              backend.search(refs[1, 0], top_k=10), backend.list_products())
    report = backend.purge_deleted(0.0, 1)  # no grace period, one row per transaction
    assert not report.skipped and report.rows >= 0
    after = (backend.version(), backend.stats(), [backend.get_product(p) for p in ("sku-000", "sku-002", "sku-003")],
             backend.search(refs[1, 0], top_k=10), backend.list_products())
    assert after[0] == before[0]  # not a write: the version stays
    assert (after[1].products, after[1].references, after[1].version) == (before[1].products, before[1].references,
                                                                          before[1].version)
    assert after[2:] == before[2:]
    assert backend.get_product("sku-001").references == []
    assert ids["sku-000"][1] not in [r.reference_id for r in backend.get_product("sku-000").references]
    with pytest.raises(NotFound):
        backend.delete_reference(ids["sku-000"][1])
    raises_invalid("older_than_seconds", lambda: backend.purge_deleted(-1.0))
    raises_invalid("limit", lambda: backend.purge_deleted(0.0, 0))


# ================================================================ keyword search (text_search)
def test_descriptions_are_stored_updated_by_mask_and_validated(backend: CatalogBackend) -> None:
    text = "Oat drink from Sweden.\nVegan, 1 l.\t" + "x" * 4000
    p, _ = backend.upsert_product("oat", "Oat drink", "drinks", {"brand": "oatly"}, description=text)
    assert p.description == text and backend.get_product("oat").product.description == text
    assert backend.list_products()[0][0].description == text
    q, _ = backend.upsert_product("oat", "Oat drink 1 l", update_fields=["display_name"])
    assert (q.display_name, q.description) == ("Oat drink 1 l", text)  # not in the fields: kept
    q, _ = backend.upsert_product("oat", description="Short", update_fields=["description"])
    assert (q.display_name, q.description, q.labels) == ("Oat drink 1 l", "Short", {"brand": "oatly"})
    q, _ = backend.upsert_product("oat", "Oat drink")  # every field: the description is cleared
    assert q.description == "" == backend.get_product("oat").product.description
    v0 = backend.version()
    raises_invalid("description", lambda: backend.upsert_product("oat", description="x" * 4097))
    raises_invalid("description", lambda: backend.upsert_product("oat", description="bell \x07"))
    raises_invalid("update_mask", lambda: backend.upsert_product("oat", update_fields=["descr"]))
    assert backend.version() == v0


def keyword(b: CatalogBackend, text: str, **kw: Any) -> list[str]:
    return [m.product_id for m in b.search_text(text, **kw)]


def test_keyword_search_ranks_by_name_category_labels_and_description(backend: CatalogBackend) -> None:
    backend.upsert_product("oatly", "Oatly Oat Milk", "milk", {"brand": "Oatly"}, description="Oat drink, Sweden")
    backend.upsert_product("arla", "Arla Standard Milk", "milk", {"brand": "Arla"})
    backend.upsert_product("grape", "Red Grapefruit", "fruit", {"colour": "pink"},
                           description="Juicy citrus with a bitter note")
    backend.upsert_product("juice", "Tropicana Juice", "juice", {}, description="Pressed from red grapefruit")
    backend.upsert_product("apple", "Pink Lady", "fruit", {})
    hits = backend.search_text("Oatly oat milk", top_k=5)
    assert hits[0].product_id == "oatly" and hits[0].display_name == "Oatly Oat Milk"
    assert [h.product_id for h in hits] == ["oatly", "arla"]  # arla shares one word ("milk")
    assert all(h.relevance > 0 for h in hits) and hits[0].relevance > hits[1].relevance
    assert keyword(backend, "red grapefruit")[:2] == ["grape", "juice"]  # the name outranks the description
    assert keyword(backend, "SWEDEN") == ["oatly"]  # description, case-insensitive
    assert keyword(backend, "fruit") == ["apple", "grape"]  # category; equal ranks ordered by product id
    assert set(keyword(backend, "pink")) == {"apple", "grape"}  # a name and a label value
    assert keyword(backend, "citrus", top_k=1) == ["grape"]
    assert keyword(backend, "nothing here") == [] and keyword(backend, "?!") == []


def test_keyword_search_filters_and_follows_every_write(backend: CatalogBackend) -> None:
    for i in range(12):
        backend.upsert_product(f"m{i:02d}", f"Milk {i}", "dairy" if i % 3 == 0 else "drinks",
                               {"brand": "a" if i % 2 else "b"})
    assert len(keyword(backend, "milk", top_k=20)) == 12
    assert keyword(backend, "milk", top_k=20, category="dairy") == ["m00", "m03", "m06", "m09"]
    assert keyword(backend, "milk", top_k=20, category="dairy", labels={"brand": "a"}) == ["m03", "m09"]
    assert keyword(backend, "milk", top_k=3, labels={"brand": "b"}) == ["m00", "m02", "m04"]
    assert keyword(backend, "milk", top_k=5, category="none") == []
    v0 = backend.version()
    keyword(backend, "milk")
    assert backend.version() == v0  # a read
    backend.upsert_product("m03", "Cocoa", update_fields=["display_name"])
    assert "m03" not in keyword(backend, "milk", top_k=20) and keyword(backend, "cocoa") == ["m03"]
    backend.delete_product("m00")
    assert keyword(backend, "milk", top_k=20, category="dairy") == ["m06", "m09"]
    backend.upsert_product("m00", "Milk again", "dairy")  # a new product under a deleted one's id
    assert keyword(backend, "again") == ["m00"]


def test_keyword_search_argument_checks(backend_factory: Make) -> None:
    b = backend_factory(max_top_k=7)
    b.upsert_product("p", "Milk")
    assert keyword(b, "milk", top_k=7) == ["p"]
    raises_invalid("top_k", lambda: b.search_text("milk", top_k=8))
    raises_invalid("top_k", lambda: b.search_text("milk", top_k=0))
    raises_invalid("query", lambda: b.search_text("  "))
    raises_invalid("category", lambda: b.search_text("milk", category=" x"))
    b.close()
    with pytest.raises(CatalogClosed):
        b.search_text("milk")
