"""catalog copy: embedded → PostgreSQL → embedded keeps every product, reference, image, hash and answer; an
interrupted copy resumes without duplicates; another model's catalog is refused before any write; the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_helpers import product_refs

from skulens.catalog.catalog import Catalog
from skulens.catalog.copy import BulkTarget, copy_catalog, embedding_hash
from skulens.catalog.errors import FingerprintMismatch
from skulens.catalog.models import NewReference
from skulens.catalog.postgres import PostgresCatalog
from skulens.catalog.settings import CatalogSettings

DIM, FP = 16, "copy-test/1:x"
SETTINGS = CatalogSettings(synchronous="NORMAL", use_gpu="never")


def _filled(path: Path, dim: int = DIM, fp: str = FP) -> Catalog:
    cat = Catalog.open(path, fingerprint=fp, dim=dim, settings=SETTINGS)
    _, refs = product_refs(6, 3, dim, seed=4)
    for p in range(6):
        cat.upsert_product(f"sku-{p}", f"Product {p}", f"cat-{p % 2}", {"brand": f"b{p % 3}"},
                           description=f"Text of product {p}\nline two")
        new = [NewReference(embedding=refs[p, j], image=f"img-{p}-{j}".encode(), source=f"s{j}",
                            request_id=f"00000000-0000-4000-8000-{p:06d}{j:06d}" if j == 0 else None)
               for j in range(2)]
        new.append(NewReference(embedding=refs[p, 2]))  # no image, no hash
        cat.add_references(f"sku-{p}", new)
    cat.upsert_product("empty", "No refs")
    return cat


def _snapshot(cat: Any) -> tuple[list[Any], list[tuple[Any, ...]], list[list[str]]]:
    products, token = [], ""
    while True:
        page, token = cat.list_products(100, token)
        products += [(p.product_id, p.display_name, p.category, p.labels, p.reference_count, p.description)
                     for p in page]
        if not token:
            break
    refs = sorted((r.product_id, r.source, r.image, r.content_sha256 or embedding_hash(r.embedding),
                   tuple(np.round(r.embedding, 5)), r.request_id or "") for r in cat.export_references(0, 1000))
    queries = np.stack([r.embedding for r in cat.export_references(0, 1000)])
    answers = [[m.product_id for m in res.matches] for res in cat.search(queries, top_k=3)]
    return products, refs, answers


def test_round_trip_through_postgres_and_resume(postgres_server: Any, tmp_path: Path) -> None:
    src = _filled(tmp_path / "src")
    pg = PostgresCatalog.open(postgres_server.url(), fingerprint=FP, dim=DIM, settings=SETTINGS,
                              schema=postgres_server.new_schema())
    back = Catalog.open(tmp_path / "back", fingerprint=FP, dim=DIM, settings=SETTINGS)
    try:
        seen: list[int] = []

        def stop_after_first(n: int) -> None:
            seen.append(n)
            raise KeyboardInterrupt  # the copy dies after its first batch

        with pytest.raises(KeyboardInterrupt):
            copy_catalog(src, pg, batch=5, progress=stop_after_first)
        assert seen == [5] and pg.stats().references == 5
        # the PostgreSQL target loads in bulk: its HNSW index was dropped for the copy, and built again even so
        assert isinstance(pg, BulkTarget) and not isinstance(src, BulkTarget)
        assert postgres_server.execute("SELECT to_regclass(%s) IS NOT NULL",
                                       (f'"{pg.schema}"."{pg.index_name()}"',)) == [(True,)]
        report = copy_catalog(src, pg, batch=5)  # resumes: what is there is skipped, nothing doubles
        assert (report.products, report.references, report.copied, report.skipped) == (7, 18, 13, 5)
        assert report.hashed_from_embedding == 6
        again = copy_catalog(src, pg, batch=7)
        assert (again.copied, again.skipped) == (0, 18) and pg.stats().references == 18
        copy_catalog(pg, back)
        expected = _snapshot(src)
        assert _snapshot(pg) == expected and _snapshot(back) == expected
    finally:
        for c in (src, pg, back):
            c.close()


def test_another_model_is_refused_before_any_write(tmp_path: Path) -> None:
    src = _filled(tmp_path / "src")
    other = Catalog.open(tmp_path / "other", fingerprint="other/1:y", dim=DIM, settings=SETTINGS)
    try:
        v0 = other.version()
        with pytest.raises(FingerprintMismatch):
            copy_catalog(src, other)
        assert other.version() == v0 and other.stats().products == 0
    finally:
        src.close()
        other.close()


def test_cli_copy_embedded_to_postgres(postgres_server: Any, clip_model_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import EXIT_OK, EXIT_USAGE, main
    from skulens.model.manifest import load_manifest

    m = load_manifest(clip_model_dir)
    _filled(tmp_path / "src", dim=m.embedding_dim, fp=m.fingerprint).close()
    url = postgres_server.new_database()
    try:
        argv = ["catalog", "copy", "--from", f"sqlite://{tmp_path / 'src'}", "--to", url, "--model",
                str(clip_model_dir), "--no-progress", "--json"]
        assert main(argv) == EXIT_OK
        report = json.loads(capsys.readouterr().out)
        assert (report["products"], report["references"], report["copied"]) == (7, 18, 18)
        assert main(argv) == EXIT_OK and json.loads(capsys.readouterr().out)["skipped"] == 18  # resumable
        assert main(["catalog", "copy", "--from", str(tmp_path / "src"), "--to", f"sqlite://{tmp_path / 'src'}",
                     "--model", str(clip_model_dir)]) == EXIT_USAGE
        assert "same catalog" in capsys.readouterr().err
    finally:
        postgres_server.drop_database(url)
