"""Files that lie are not believed: checksummed index snapshots, a store checked at open, `check_catalog`.

Every test builds a real catalog in tmp_path and damages its real files the way the attacker drill did
(snapshot vectors overwritten with header and size intact, catalog.db truncated / missing / zeroed page /
not a database / read-only), then asserts what opening it and checking it do.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from catalog_helpers import product_refs

from skulens.catalog import Catalog, CatalogError, CatalogSettings, NewReference
from skulens.catalog.errors import CatalogCorrupt
from skulens.catalog.index import SNAPSHOT_MAGIC, VectorIndex
from skulens.catalog.integrity import check_catalog
from skulens.catalog.store import Store

DIM = 32
FP = "test-model/random/32:0123456789abcdef"
N_PRODUCTS, REFS_PER = 40, 10  # 400 references, like the drill
SETTINGS = CatalogSettings(synchronous="NORMAL")
ROOT = os.geteuid() == 0


def build(path: Path, *, images: bool = True) -> np.ndarray:
    """A closed catalog of 400 references (with images: a db of ~75 pages) and its snapshot; returns refs."""
    _, refs = product_refs(N_PRODUCTS, REFS_PER, DIM, seed=3)
    with Catalog.open(path, fingerprint=FP, dim=DIM, settings=SETTINGS) as c:
        for i in range(N_PRODUCTS):
            c.upsert_product(f"sku-{i:03d}")
            c.add_references(f"sku-{i:03d}", [
                NewReference(refs[i, j], image=f"image {i} {j} ".encode() * 20 if images else None)
                for j in range(REFS_PER)])
    assert (path / "index.snapshot").exists()
    return refs.reshape(-1, DIM)


def open_cat(path: Path) -> Catalog:
    return Catalog.open(path, fingerprint=FP, dim=DIM, settings=SETTINGS)


def assert_exact(c: Catalog, refs: np.ndarray) -> None:
    """The catalog's 5 nearest references of every reference vector equal a brute-force search of the store."""
    ids, _, vectors = c.sample_references()
    np.testing.assert_array_equal(vectors[np.argsort(ids)], refs)  # store holds the vectors enrolled, in order
    scores, got, _ = c.nearest_references(refs, 5)
    sims = refs @ vectors.T
    exact = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(got, ids[exact])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, exact, 1), atol=1e-5)
    assert np.all(got[:, 0] == ids[np.argsort(ids)])  # each reference is its own nearest neighbour


def overwrite_vectors(snapshot: Path, refs: np.ndarray) -> None:
    """The drill's attack: reverse the order of the stored vectors inside the snapshot, size and header intact."""
    data = bytearray(snapshot.read_bytes())
    block = refs.astype("<f4").tobytes()
    at = data.find(block)
    assert at > 0, "the flat index stores the vectors contiguously"
    data[at:at + len(block)] = refs[::-1].astype("<f4").tobytes()
    size = snapshot.stat().st_size
    snapshot.write_bytes(bytes(data))
    assert snapshot.stat().st_size == size and VectorIndex.read_header(snapshot) is not None


def warnings_about(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]


# ------------------------------------------------------------------ snapshots
def test_intact_snapshot_is_loaded_and_checked_healthy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refs = build(tmp_path)
    snap = tmp_path / "index.snapshot"
    assert snap.read_bytes().startswith(SNAPSHOT_MAGIC) and VectorIndex.verify_snapshot(snap) is None
    with caplog.at_level(logging.WARNING), open_cat(tmp_path) as c:
        st = c.stats()
        assert st.snapshot.loaded and st.snapshot.detail == "loaded"
        assert_exact(c, refs)
    assert not warnings_about(caplog, snap)
    report = check_catalog(tmp_path, fingerprint=FP, dim=DIM)
    assert report.healthy, report.format()
    text = report.format()
    assert "integrity_check passed" in text and "400 references" in text and "same ids and vectors" in text
    assert text.endswith("result: healthy")


def test_overwritten_snapshot_vectors_are_detected_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refs = build(tmp_path)
    snap = tmp_path / "index.snapshot"
    overwrite_vectors(snap, refs)
    report = check_catalog(tmp_path)
    assert not report.healthy and len(report.problems) == 1
    assert str(snap) in report.problems[0] and "fails its checksum" in report.problems[0]
    assert "rebuilds the index from the store" in report.format()
    with caplog.at_level(logging.WARNING), open_cat(tmp_path) as c:
        st = c.stats()
        assert not st.snapshot.loaded and st.snapshot.detail.startswith("corrupt snapshot: fails its checksum")
        assert_exact(c, refs)  # rebuilt from the store: every reference recognised as itself
    (warning,) = warnings_about(caplog, snap)
    assert "fails its checksum" in warning and "rebuilding the index from the store" in warning
    # the close wrote a good snapshot again, which the next open believes
    assert VectorIndex.verify_snapshot(snap) is None and check_catalog(tmp_path).healthy
    with open_cat(tmp_path) as c:
        assert c.stats().snapshot.loaded
        assert_exact(c, refs)


@pytest.mark.parametrize("damage, reason", [
    ("old-format", "has no checksum (written by an older skulens)"),
    ("truncated", "has no checksum trailer"),
    ("checksum", "fails its checksum"),
    ("garbage", "not a skulens index snapshot or its header is garbled"),
])
def test_snapshot_without_a_valid_checksum_is_never_believed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    refs = build(tmp_path)
    snap = tmp_path / "index.snapshot"
    data = snap.read_bytes()
    if damage == "old-format":  # a version-1 file: same header and index, no trailer
        snap.write_bytes(data[:len(SNAPSHOT_MAGIC) - 1] + b"\x01" + data[len(SNAPSHOT_MAGIC):-48])
    elif damage == "truncated":
        snap.write_bytes(data[:-10])
    elif damage == "checksum":  # the recorded sha256 itself garbled
        snap.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        snap.write_bytes(b"\x00" * len(data))
    with caplog.at_level(logging.WARNING), open_cat(tmp_path) as c:
        assert not c.stats().snapshot.loaded
        assert_exact(c, refs)
    (warning,) = warnings_about(caplog, snap)
    assert reason in warning and "rebuilding the index from the store" in warning


def test_snapshot_whose_ids_or_count_differ_from_the_store_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot with a valid checksum and a current stamp that holds other ids (counts vs snapshot)."""
    refs = build(tmp_path)
    snap = tmp_path / "index.snapshot"
    header = VectorIndex.read_header(snap)
    assert header is not None
    with open_cat(tmp_path) as c:
        ids = np.sort(c.sample_references()[0])
    wrong = VectorIndex.build(DIM, ids + 1000, refs, SETTINGS, "flat")  # same count, other ids
    wrong.save(snap, header["stamp"])
    assert VectorIndex.verify_snapshot(snap) is None
    report = check_catalog(tmp_path)
    assert not report.healthy
    assert "400 references of the store are not in the index" in report.problems[0]
    assert "400 ids in the index are not in the store" in report.problems[0]
    with caplog.at_level(logging.WARNING), open_cat(tmp_path) as c:
        assert not c.stats().snapshot.loaded
        assert_exact(c, refs)
    (warning,) = warnings_about(caplog, snap)
    assert "differ from the store's 400 references" in warning
    shorter = VectorIndex.build(DIM, ids[:399], refs[:399], SETTINGS, "flat")  # one reference short
    shorter.save(snap, header["stamp"])  # the stamp still says 400 references
    with open_cat(tmp_path) as c:
        assert "snapshot holds 399 live vectors, store has 400" in c.stats().snapshot.detail
        assert_exact(c, refs)


def test_stale_snapshot_is_a_note_not_a_problem(tmp_path: Path) -> None:
    build(tmp_path)
    store = Store(tmp_path / "catalog.db")  # another writer after the snapshot was written
    store.delete_product("sku-000")
    store.close()
    report = check_catalog(tmp_path)
    assert report.healthy, report.format()
    assert any(level == "note" and "stale" in text and "generation" in text for level, text in report.lines)


# ------------------------------------------------------------------ store refused at open
def test_truncated_store_next_to_a_snapshot_is_refused(tmp_path: Path) -> None:
    build(tmp_path)
    db = tmp_path / "catalog.db"
    db.write_bytes(b"")
    with pytest.raises(CatalogCorrupt) as err:
        open_cat(tmp_path)
    msg = str(err.value)
    assert f"catalog store {db} is empty (0 bytes)" in msg and f"{tmp_path / 'index.snapshot'} exists" in msg
    assert "(an index of 400 references)" in msg
    assert f"restore {tmp_path} from a backup" in msg and "move" in msg and "aside" in msg
    assert f"skulens catalog check --data {tmp_path}" in msg
    assert db.stat().st_size == 0 and sorted(os.listdir(tmp_path)) == ["catalog.db", "index.snapshot"]  # untouched
    report = check_catalog(tmp_path)
    assert not report.healthy and "is empty (0 bytes)" in report.problems[0]
    db.unlink()
    with pytest.raises(CatalogCorrupt, match=f"catalog store {db} is missing"):
        open_cat(tmp_path)
    assert not db.exists()


def test_lost_store_with_a_wal_is_refused(tmp_path: Path) -> None:
    """The store gone while its WAL (acknowledged writes not yet checkpointed) is still there."""
    live = tmp_path / "live"
    c = Catalog.open(live, fingerprint=FP, dim=DIM, settings=CatalogSettings(snapshot=False))
    c.upsert_product("sku-1")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(live / "catalog.db-wal", copy / "catalog.db-wal")  # the copy lacks catalog.db
    c.close()
    with pytest.raises(CatalogCorrupt, match=r"catalog\.db is missing, yet .*catalog\.db-wal holds \d+ bytes"):
        Catalog.open(copy, fingerprint=FP, dim=DIM)


def test_store_without_schema_next_to_a_snapshot_is_refused(tmp_path: Path) -> None:
    build(tmp_path)
    db = tmp_path / "catalog.db"
    db.unlink()
    con = sqlite3.connect(db)  # a valid, empty SQLite database
    con.execute("PRAGMA user_version = 1")
    con.close()
    with pytest.raises(CatalogCorrupt, match=f"catalog store {db} holds no catalog schema, yet .*index.snapshot"):
        open_cat(tmp_path)
    assert "holds no catalog schema" in check_catalog(tmp_path).problems[0]


def test_new_catalogs_still_start_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open_cat(tmp_path / "new") as c:  # directory created
        assert c.stats().products == 0
    (tmp_path / "empty").mkdir()
    with open_cat(tmp_path / "empty") as c:
        c.upsert_product("a")
    with open_cat(tmp_path / "empty") as c:
        assert c.stats().products == 1 and c.stats().snapshot.loaded
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "catalog.db").write_bytes(b"")  # an empty file and nothing else: no data lost
    with caplog.at_level(logging.WARNING), open_cat(tmp_path / "zero") as c:
        assert c.stats().products == 0
    assert any("is an empty file and nothing else shows data" in r.getMessage() for r in caplog.records)
    assert check_catalog(tmp_path / "zero").healthy
    report = check_catalog(tmp_path / "nothing")
    assert not report.healthy and "is not a directory" in report.problems[0]


def test_zeroed_page_is_detected_at_open_and_by_check(tmp_path: Path) -> None:
    build(tmp_path)
    db = tmp_path / "catalog.db"
    data = bytearray(db.read_bytes())
    pages = len(data) // 4096
    assert pages >= 50  # a multi-page database; the page in the middle holds references
    mid = pages // 2
    data[mid * 4096:(mid + 1) * 4096] = bytes(4096)
    db.write_bytes(bytes(data))
    with pytest.raises(CatalogCorrupt) as err:
        open_cat(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"catalog store {db} failed SQLite's quick_check (")
    assert "database disk image is malformed" in msg or f"Page {mid + 1}" in msg
    assert f"restore {tmp_path} from a backup" in msg and "\n" not in msg
    assert db.read_bytes() == bytes(data)  # nothing written
    report = check_catalog(tmp_path)
    assert not report.healthy
    assert report.problems[0].startswith(f"{db}: SQLite integrity_check failed: ")
    assert "restore" in report.format().splitlines()[-1]


def test_not_a_database_and_unopenable_store_name_the_file(tmp_path: Path) -> None:
    build(tmp_path)
    db = tmp_path / "catalog.db"
    db.write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(CatalogCorrupt, match=f"catalog store {db} is damaged \\(file is not a database\\); restore"):
        open_cat(tmp_path)
    assert "file is not a database" in check_catalog(tmp_path).problems[0]
    db.unlink()
    db.mkdir()  # unopenable, even for root
    with pytest.raises(CatalogError, match=f"cannot use catalog store {db} \\(unable to open database file\\)"):
        open_cat(tmp_path)


_PROBE = """
import sys
from skulens.catalog import Catalog, CatalogError
try:
    Catalog.open(sys.argv[1], fingerprint=sys.argv[2], dim=32).close()
except CatalogError as exc:
    print(type(exc).__name__, exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("mode", ["read-only", "unreadable"])
def test_read_only_or_unreadable_store_names_the_file(tmp_path: Path, mode: str) -> None:
    """Root ignores file modes, so as root the open runs in a child process dropped (setpriv) to the
    unprivileged uid 65534, on a copy of the catalog in a fresh /tmp directory (tmp_path's parents are private);
    skipped as root only when privileges cannot be dropped."""
    build(tmp_path / "cat")
    work = Path(tempfile.mkdtemp(prefix="skulens-perm-")) if ROOT else tmp_path / "perm"
    try:
        data = work / "cat"
        shutil.copytree(tmp_path / "cat", data)
        db = data / "catalog.db"
        os.chmod(work, 0o755)
        os.chmod(db, 0o444 if mode == "read-only" else 0o000)
        os.chmod(data, 0o555)
        if ROOT:
            env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv: cannot drop privileges to test file modes")
            drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
            out = subprocess.run([*drop, sys.executable, "-c", _PROBE, str(data), FP], capture_output=True,
                                 text=True, env=env, cwd="/", timeout=120)
            if out.returncode != 3 and ("No module named" in out.stderr or "Permission denied" in out.stderr):
                pytest.skip(f"uid 65534 cannot run this checkout's Python: {out.stderr.strip()[-200:]}")
            assert out.returncode == 3, out.stdout + out.stderr
            text = out.stdout.strip()
        else:
            with pytest.raises(CatalogError) as err:
                open_cat(data)
            text = f"{type(err.value).__name__} {err.value}"
        assert "Traceback" not in text and str(db) in text
        if mode == "read-only":
            assert text.startswith(f"CatalogError catalog store {db} is read-only (")
            assert "needs write access" in text
        else:
            assert text.startswith(f"CatalogError cannot use catalog store {db} (unable to open database file)")
    finally:
        for p in (work / "cat", work / "cat" / "catalog.db"):
            if p.exists():
                os.chmod(p, 0o755)
        if ROOT:
            shutil.rmtree(work, ignore_errors=True)


def test_check_compares_the_model_when_given(tmp_path: Path) -> None:
    build(tmp_path)
    report = check_catalog(tmp_path, fingerprint="other-model:1", dim=64)
    assert not report.healthy
    (problem,) = report.problems
    assert f"made by {FP} (dim {DIM}) but the model is other-model:1 (dim 64)" in problem
    assert "skulens reembed" in report.format().splitlines()[-1]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_check_compares_approximate_snapshots_with_the_store(tmp_path: Path, kind: str) -> None:
    """HNSW keeps deleted vectors as tombstones, IVF removes them: both check healthy, and a vector changed
    behind a recomputed checksum is caught by the vector comparison."""
    s = CatalogSettings(synchronous="NORMAL", approximate_threshold=300, approximate_kind=kind)  # type: ignore[arg-type]
    _, refs = product_refs(N_PRODUCTS, REFS_PER, DIM, seed=3)
    with Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s) as c:
        for i in range(N_PRODUCTS):
            c.upsert_product(f"sku-{i:03d}")
            c.add_references(f"sku-{i:03d}", [NewReference(refs[i, j]) for j in range(REFS_PER)])
        assert c.wait_for_index(60) and c.stats().index_kind == kind
        c.delete_product("sku-000")
    with Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s) as c:
        st = c.stats()
        assert st.snapshot.loaded and st.index_kind == kind
        assert st.index_tombstones == (REFS_PER if kind == "hnsw" else 0)
    report = check_catalog(tmp_path)
    assert report.healthy, report.format()
    line = next(text for level, text in report.lines if "same ids and vectors" in text)
    assert f"{kind} index" in line and "390 references" in line
    assert ("+10 tombstones" in line) == (kind == "hnsw")
    snap = tmp_path / "index.snapshot"  # re-save one vector changed, with a valid checksum and the same stamp
    header = VectorIndex.read_header(snap)
    assert header is not None
    index = VectorIndex.load(snap, s)
    ids, vectors = index.stored_vectors()
    vectors[ids == ids[-1]] *= -1
    VectorIndex.build(DIM, ids, vectors, s, "flat").save(snap, header["stamp"])
    report = check_catalog(tmp_path)
    assert not report.healthy and "index vectors differ from the store's embeddings" in report.problems[0]
