"""skulens.catalog.doctor (`skulens catalog doctor`): on a synthetic catalog whose answer is known by construction,
on both backends (look-alike pairs with their scores and closest references, confused references,
near-duplicates, products with too few references); the pure part on edge cases; the CLI and its exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from catalog_helpers import unit
from test_catalog_backend_contract import BACKENDS

from skulens.catalog.backend import CatalogBackend
from skulens.catalog.doctor import diagnose, examine
from skulens.catalog.models import NewReference, Product

DIM = 16
FP = "doctor-model/random/16:0123456789abcdef"
E = np.eye(DIM, dtype=np.float32)

#: product -> its references. x1 and x2 look alike (centroid cosine 0.95) and x2's references all lie nearer x1's
#: than their own; y stands apart; w has a near-duplicate of z's only reference; "empty" has none.
REFS = {
    "x1": [unit(E[0] + 0.1 * E[k]) for k in (1, 2, 3)],
    "x2": [unit(E[0] + 0.5 * E[k]) for k in (4, 5, 6)],
    "y": [E[8], unit(E[8] + 0.2 * E[9]), unit(E[8] + 0.2 * E[10])],
    "z": [E[12]],
    "w": [E[13], unit(E[13] + 0.1 * E[14]), unit(E[12] + 0.01 * E[15])],
    "empty": [],
}


def _fill(cat: CatalogBackend) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for n, (pid, vecs) in enumerate(REFS.items()):
        cat.upsert_product(pid, display_name=f"Product {pid}")
        added = cat.add_references(pid, [NewReference(embedding=v, content_sha256=f"{n:032x}{j:032x}")
                                         for j, v in enumerate(vecs)]) if vecs else []
        ids[pid] = [a.reference_id for a in added]
    return ids


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogBackend]:
    with BACKENDS[request.param](tmp_path) as open_:
        backend = open_(DIM, FP, {})
        try:
            yield backend
        finally:
            backend.close()


def _closest(a: str, b: str, ids: dict[str, list[int]]) -> tuple[float, int, int]:
    sims = np.stack(REFS[a]) @ np.stack(REFS[b]).T
    i, j = np.unravel_index(int(sims.argmax()), sims.shape)
    return float(sims[i, j]), ids[a][i], ids[b][j]


def _centroid_cos(a: str, b: str) -> float:
    ca, cb = unit(np.mean(REFS[a], axis=0)), unit(np.mean(REFS[b], axis=0))
    return float(ca @ cb)


def test_diagnose_a_known_catalog_on_each_backend(catalog: CatalogBackend) -> None:
    ids = _fill(catalog)
    report = diagnose(catalog, pair_threshold=0.9, near_duplicate_threshold=0.99, min_references=3)
    assert (report.products, report.references) == (6, 13)
    assert report.few_references == [("empty", 0), ("z", 1)]
    assert report.closer_to_other == 4  # x2's three references, and w's copy of z
    assert report.near_duplicates == 1  # w's copy ~ z's reference
    pairs = {(p.product_a, p.product_b): p for p in report.look_alikes}
    assert set(pairs) == {("x1", "x2"), ("w", "z")}
    x = pairs["x1", "x2"]
    assert x.centroid_cosine == pytest.approx(_centroid_cos("x1", "x2"), abs=1e-5) and x.centroid_cosine > 0.9
    score, ra, rb = _closest("x1", "x2", ids)
    assert (x.closest_score, x.closest_reference_a, x.closest_reference_b) == (pytest.approx(score, abs=1e-5), ra, rb)
    assert (x.confused_a, x.confused_b) == (0, 3) and (x.name_a, x.name_b) == ("Product x1", "Product x2")
    wz = pairs["w", "z"]
    assert (wz.closest_reference_a, wz.closest_reference_b) == (ids["w"][2], ids["z"][0])
    assert wz.closest_score == pytest.approx(float(REFS["w"][2] @ E[12]), abs=1e-5)
    assert (wz.confused_a, wz.confused_b) == (1, 0) and wz.centroid_cosine < 0.9
    assert [(p.product_a, p.product_b) for p in report.look_alikes] == [("x1", "x2"), ("w", "z")]  # by centroid
    assert not report.clean
    text = report.format()
    assert "look-alike product pairs: 2" in text and "x1 (Product x1)  ~  x2 (Product x2)" in text
    assert "fewer than 3 references: empty (0), z (1)" in text and text.endswith("verdict: findings (exit status 1)")
    as_json = report.to_json()
    assert as_json["clean"] is False and as_json["few_references"][0] == {"product_id": "empty", "references": 0}
    assert json.loads(json.dumps(as_json))["look_alikes"][0]["confused_b"] == 3
    # stricter thresholds: only confusion keeps x1 ~ x2 and w ~ z listed; default near-duplicate: the setting
    assert {(p.product_a, p.product_b) for p in diagnose(catalog, pair_threshold=0.99).look_alikes} == set(pairs)
    assert diagnose(catalog, min_references=1).few_references == [("empty", 0)]


def test_a_clean_catalog(catalog: CatalogBackend) -> None:
    for k, pid in enumerate(("p", "q")):
        catalog.upsert_product(pid)
        catalog.add_references(pid, [NewReference(embedding=unit(E[4 * k] + 0.1 * E[4 * k + j]),
                                                  content_sha256=f"{k}{j}".ljust(64, "0")) for j in (1, 2, 3)])
    report = diagnose(catalog)
    assert report.clean and report.look_alikes == [] and report.closer_to_other == 0
    assert report.format().endswith("verdict: clean")


def test_examine_edge_cases() -> None:
    empty = examine([], np.zeros(0, dtype=np.int64), [], np.zeros((0, DIM), dtype=np.float32), pair_threshold=0.9,
                    near_duplicate_threshold=0.93, min_references=3)
    assert (empty.products, empty.references, empty.clean) == (0, 0, True)
    one = examine([Product("solo")], np.array([7]), ["solo"], E[:1], pair_threshold=0.9,
                  near_duplicate_threshold=0.93, min_references=1)
    assert one.clean and one.closer_to_other == 0
    with pytest.raises(ValueError, match="2 product ids"):
        examine([], np.array([1, 2]), ["a", "b"], E[:3], pair_threshold=0.9, near_duplicate_threshold=0.9,
                min_references=1)


def test_examine_works_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 2 rows give the same answer as one block."""
    import skulens.catalog.doctor as doctor

    pids = [p for p, vecs in REFS.items() for _ in vecs]
    vecs = np.stack([v for vs in REFS.values() for v in vs])
    ids = np.arange(1, len(pids) + 1)
    products = [Product(p) for p in REFS]
    args = dict(pair_threshold=0.9, near_duplicate_threshold=0.99, min_references=3)
    whole = doctor.examine(products, ids, pids, vecs, **args)  # type: ignore[arg-type]
    monkeypatch.setattr(doctor, "BLOCK", 2)
    small = doctor.examine(products, ids, pids, vecs, **args)  # type: ignore[arg-type]
    whole.seconds = small.seconds = 0.0
    assert whole == small


def test_cli_doctor_exit_codes(tmp_path: Path, effnet_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.catalog.catalog import Catalog
    from skulens.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
    from skulens.model.manifest import load_manifest

    m = load_manifest(effnet_model_dir)
    basis = np.eye(m.embedding_dim, dtype=np.float32)
    with Catalog.open(tmp_path / "cat", fingerprint=m.fingerprint, dim=m.embedding_dim) as cat:
        for k in range(2):
            cat.upsert_product(f"p{k}")
            cat.add_references(f"p{k}", [NewReference(embedding=unit(basis[4 * k] + 0.1 * basis[4 * k + j]))
                                         for j in (1, 2, 3)])
    argv = ["catalog", "doctor", "--catalog", str(tmp_path / "cat"), "--model", str(effnet_model_dir)]
    assert main(argv) == EXIT_OK
    assert capsys.readouterr().out.rstrip().endswith("verdict: clean")
    assert main([*argv, "--min-references", "4", "--json"]) == EXIT_FAIL
    out = json.loads(capsys.readouterr().out)
    assert out["clean"] is False and [f["product_id"] for f in out["few_references"]] == ["p0", "p1"]
    assert main(["catalog", "doctor", "--data", str(tmp_path / "cat"), "--model", str(tmp_path / "nope")]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("skulens: error: ")
