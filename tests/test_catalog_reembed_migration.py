"""skulens.catalog.reembed_migration: re-embedding a real PostgreSQL (and embedded) catalog as a migration done
offline — switch and finish, resume after an interrupted run, refusal naming what blocks the switch, a rerun after
a switch, waiting for another back-filler's lease, and which catalogs take which path."""

from __future__ import annotations

import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_helpers import fake_model, image_bytes, unit

from skulens.catalog.catalog import Catalog
from skulens.catalog.errors import FingerprintMismatch, MigrationError
from skulens.catalog.location import CatalogLocation, parse_location
from skulens.catalog.migration_state import ModelSpace
from skulens.catalog.models import NewReference
from skulens.catalog.postgres import PostgresCatalog
from skulens.catalog.reembed_migration import (
    ReembedBlocked,
    open_for_reembed,
    reembed_by_migration,
    runs_as_migration,
)
from skulens.catalog.settings import CatalogSettings

OLD_FP, OLD_DIM = "old-model/16:aaaa", 16
NEW = ModelSpace("new-model/48:bbbb", 48, "/models/new")
SETTINGS = CatalogSettings(synchronous="NORMAL", use_gpu="never")


def enrol(cat: Any, n_products: int = 5, refs_per: int = 2) -> None:
    """Products sku-0.. with `refs_per` stored fake images each, embedded by the old fake model."""
    old = fake_model(OLD_DIM, seed=1)
    for p in range(n_products):
        cat.upsert_product(f"sku-{p}")
        imgs = [image_bytes(f"sku-{p}", j) for j in range(refs_per)]
        cat.add_references(f"sku-{p}", [NewReference(vec, image=img) for vec, img in zip(old(imgs), imgs, strict=True)])


@pytest.fixture
def pg(postgres_server: Any, schema: str) -> Any:
    cat = PostgresCatalog.open(postgres_server.url(), fingerprint=OLD_FP, dim=OLD_DIM, settings=SETTINGS, schema=schema)
    yield cat
    cat.close()


def top1(cat: Any, embed: Any, products: range) -> list[str]:
    q = np.stack([embed([image_bytes(f"sku-{p}", 7)])[0] for p in products])
    return [r.matches[0].product_id for r in cat.search(q, top_k=1)]


def test_switches_and_finishes_a_shared_catalog(pg: PostgresCatalog) -> None:
    enrol(pg)
    seen: list[tuple[int, int]] = []
    report = reembed_by_migration(pg, NEW, fake_model(NEW.dim), batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert (report.old_fingerprint, report.new_fingerprint, report.old_dim, report.new_dim) == (
        OLD_FP, NEW.fingerprint, OLD_DIM, NEW.dim)
    assert (report.reembedded, report.resumed, report.dropped) == (10, 0, [])
    assert seen == [(3, 10), (6, 10), (9, 10), (10, 10)]
    state = pg.migration_state()
    assert (state.phase, state.serving.fingerprint, state.serving.dim) == ("none", NEW.fingerprint, NEW.dim)
    assert pg.fingerprint == NEW.fingerprint and pg.stats().references == 10
    assert top1(pg, fake_model(NEW.dim), range(5)) == [f"sku-{p}" for p in range(5)]

    def never(images: list[bytes], regions: Any = None) -> list[Any]:
        raise AssertionError("nothing is left to embed")

    again = reembed_by_migration(pg, NEW, never)  # a rerun after it finished changes nothing
    assert (again.old_fingerprint, again.reembedded, again.resumed) == (NEW.fingerprint, 10, 10)
    assert pg.migration_state().phase == "none"


def test_an_interrupted_run_resumes_from_the_committed_batches(pg: PostgresCatalog) -> None:
    enrol(pg)
    real = fake_model(NEW.dim)
    calls: list[int] = []

    def flaky(images: list[bytes], regions: Any = None) -> list[Any]:
        calls.append(len(images))
        if len(calls) == 3:
            raise RuntimeError("GPU fell off the bus")
        return real(images)

    with pytest.raises(RuntimeError, match="bus"):
        reembed_by_migration(pg, NEW, flaky, batch_size=4)
    state = pg.migration_state()
    assert (state.phase, state.serving.fingerprint, state.candidate) == ("candidate", OLD_FP, NEW)
    assert pg.space_progress(NEW.fingerprint).embedded == 8  # two batches committed; the old model still serves
    assert top1(pg, fake_model(OLD_DIM, seed=1), range(5)) == [f"sku-{p}" for p in range(5)]
    calls.clear()
    report = reembed_by_migration(pg, NEW, flaky, batch_size=4)
    assert calls == [2] and (report.reembedded, report.resumed) == (10, 8)
    assert pg.migration_state().phase == "none" and pg.fingerprint == NEW.fingerprint


def test_references_that_cannot_be_embedded_block_the_switch_and_are_named(pg: PostgresCatalog) -> None:
    enrol(pg, n_products=3)
    pg.upsert_product("no-image")
    (no_img,) = pg.add_references("no-image", [NewReference(unit(np.ones(OLD_DIM)))])
    pg.upsert_product("broken")
    (broken,) = pg.add_references("broken", [NewReference(unit(-np.ones(OLD_DIM)), image=b"corrupt-jpeg")])
    with pytest.raises(ReembedBlocked) as err:
        reembed_by_migration(pg, NEW, fake_model(NEW.dim), batch_size=4)
    assert isinstance(err.value, MigrationError) and err.value.count == 2
    assert [(d.reference_id, d.product_id, d.reason) for d in err.value.references] == [
        (no_img.reference_id, "no-image", "no stored image"),
        (broken.reference_id, "broken", "embedding failed: cannot decode image")]
    msg = err.value.message
    assert "lacks embeddings of 2 of 8 live references (1 have no stored image, 1 could not be embedded)" in msg
    assert f"keeps the 6 embeddings back-filled so far (nothing was switched; the catalog still serves '{OLD_FP}')" \
        in msg
    assert pg.migration_state().phase == "candidate" and pg.fingerprint == OLD_FP
    pg.delete_reference(no_img.reference_id)
    pg.delete_reference(broken.reference_id)
    report = reembed_by_migration(pg, NEW, fake_model(NEW.dim), batch_size=4)
    assert (report.reembedded, report.resumed) == (6, 6)
    assert pg.fingerprint == NEW.fingerprint and pg.migration_state().phase == "none"


def test_keep_previous_then_a_rerun_finishes(pg: PostgresCatalog) -> None:
    enrol(pg)
    kept = reembed_by_migration(pg, NEW, fake_model(NEW.dim), keep_previous=True)
    state = pg.migration_state()
    assert (state.phase, state.serving, state.previous) == ("switched", NEW, ModelSpace(OLD_FP, OLD_DIM))
    assert (kept.reembedded, kept.resumed) == (10, 0)
    # the old space is still searchable (switching back would undo it)
    q = np.stack(fake_model(OLD_DIM, seed=1)([image_bytes("sku-2", 7)]))
    assert pg.search(q, top_k=1, space=OLD_FP)[0].matches[0].product_id == "sku-2"
    again = reembed_by_migration(pg, NEW, fake_model(NEW.dim))  # e.g. the first run was killed before finishing
    assert (again.old_fingerprint, again.new_fingerprint, again.reembedded, again.resumed) == (
        OLD_FP, NEW.fingerprint, 10, 10)
    assert pg.migration_state().phase == "none"


def test_another_migration_is_refused(pg: PostgresCatalog) -> None:
    enrol(pg, n_products=1)
    pg.start_migration(ModelSpace("third-model/8:cccc", 8, "/models/third"))
    with pytest.raises(MigrationError, match="a migration to 'third-model/8:cccc' is running: abort it"):
        reembed_by_migration(pg, NEW, fake_model(NEW.dim))


def test_waits_while_another_process_back_fills(postgres_server: Any, schema: str, pg: PostgresCatalog) -> None:
    """A server holding the back-fill lease fills the space: the run waits for it and then switches."""
    enrol(pg, n_products=2)
    server = PostgresCatalog.open(postgres_server.url(), fingerprint=OLD_FP, dim=OLD_DIM, settings=SETTINGS,
                                  schema=schema)
    calls: list[int] = []

    def embed(images: list[bytes], regions: Any = None) -> list[Any]:
        calls.append(len(images))
        return fake_model(NEW.dim)(images)

    done: list[Any] = []
    waiting = threading.Event()  # the run reports progress while it waits for the lease: it has started
    try:
        with server.backfill_lease() as mine:
            assert mine
            run = threading.Thread(target=lambda: done.append(
                reembed_by_migration(pg, NEW, embed, wait_seconds=0.05, progress=lambda d, t: waiting.set())))
            run.start()
            assert waiting.wait(30)  # (filling before the run looked would count the references as resumed)
            pending = server.pending_references(NEW.fingerprint, limit=100)
            server.put_space_embeddings(NEW.fingerprint, [p.reference_id for p in pending],
                                        np.stack(fake_model(NEW.dim)([p.image for p in pending])))
        run.join(30)
    finally:
        server.close()
    assert calls == [] and done[0].resumed == 0 and done[0].reembedded == 4
    assert pg.migration_state().serving.fingerprint == NEW.fingerprint


def test_which_catalogs_run_as_a_migration(tmp_path: Path, postgres_server: Any) -> None:
    with Catalog.open(tmp_path / "e", fingerprint=OLD_FP, dim=OLD_DIM, settings=SETTINGS) as emb:
        enrol(emb, n_products=2)
        assert not runs_as_migration(emb) and runs_as_migration(emb, keep_previous=True)
    where = CatalogLocation("sqlite", path=tmp_path / "e")
    cat, migrate = open_for_reembed(where, NEW, SETTINGS)  # the staged swap: opened for the new model
    with closing(cat):
        assert not migrate and cat.fingerprint == OLD_FP
        with pytest.raises(FingerprintMismatch):
            cat.search(unit(np.ones(NEW.dim)))
    cat, migrate = open_for_reembed(where, NEW, SETTINGS, keep_previous=True)  # opened for the serving model
    with closing(cat):
        assert migrate
        report = reembed_by_migration(cat, NEW, fake_model(NEW.dim), keep_previous=True)
        assert report.reembedded == 4 and cat.migration_state().phase == "switched"
        assert top1(cat, fake_model(NEW.dim), range(2)) == ["sku-0", "sku-1"]
    url = postgres_server.new_database()
    try:
        with PostgresCatalog.open(url, fingerprint=OLD_FP, dim=OLD_DIM, settings=SETTINGS) as shared:
            enrol(shared, n_products=1)
        cat, migrate = open_for_reembed(parse_location(url), NEW, SETTINGS)
        with closing(cat):
            assert migrate and cat.fingerprint == OLD_FP
            cat.search(unit(np.ones(OLD_DIM)))  # opened for the model it serves: no mismatch
    finally:
        postgres_server.drop_database(url)
