"""skulens.catalog.calibrate: threshold / margin suggestions from the catalog itself (leave-one-out) and from held-out
labelled photos (figures computed by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from catalog_helpers import product_refs, unit

from skulens.catalog import Catalog, CatalogSettings, NewReference
from skulens.catalog.calibrate import calibrate, calibrate_held_out  # the function, whatever was imported before
from skulens.catalog.evaluation import held_out_scores, query_from_result

DIM = 32


def _catalog(tmp_path: Path, *, variants: int) -> Catalog:
    c = Catalog.open(tmp_path, fingerprint="m", dim=DIM, settings=CatalogSettings(synchronous="NORMAL"))
    centres, refs = product_refs(40, 3, DIM, seed=11)
    for i in range(40):
        c.upsert_product(f"p{i}")
        c.add_references(f"p{i}", [NewReference(r) for r in refs[i]])
    rng = np.random.default_rng(12)
    for i in range(variants):  # brand variants: a second product whose centre sits close to p{i}'s
        centre = unit(centres[i] + 0.35 * unit(rng.standard_normal(DIM)))
        jitter = rng.standard_normal((3, DIM)) * (0.6 / np.sqrt(DIM))  # as product_refs(noise=0.15)
        c.upsert_product(f"p{i}-variant")
        c.add_references(f"p{i}-variant", [NewReference(unit(centre + j)) for j in jitter])
    for i in range(5):  # single-reference products: impostor samples only
        c.upsert_product(f"single{i}")
        c.add_references(f"single{i}", [NewReference(unit(rng.standard_normal(DIM)))])
    return c


def test_separable_catalog_gets_a_threshold_between_the_distributions(tmp_path: Path) -> None:
    c = _catalog(tmp_path, variants=0)
    report = calibrate(c)
    assert report.queries == 125 and report.genuine == 120 and report.products == 45
    assert report.other_percentiles[99] < report.suggested_unknown_threshold < report.own_percentiles[1]
    by_t = {r.threshold: r for r in report.thresholds}
    chosen = by_t[report.suggested_unknown_threshold]
    assert chosen.false_accept <= 0.01 and chosen.false_reject <= 0.05
    fa = [r.false_accept for r in report.thresholds]
    fr = [r.false_reject for r in report.thresholds]
    assert fa == sorted(fa, reverse=True) and fr == sorted(fr)  # the trade-off is monotone
    assert report.suggested_ambiguity_margin == 0.005  # no confusions seen: the floor
    text = report.format_table()
    assert "unknown_threshold" in text and "←suggested" in text and "ambiguity_margin" in text
    assert f"suggested unknown_threshold = {report.suggested_unknown_threshold:.3f}" in text
    c.close()


def test_brand_variants_need_a_margin(tmp_path: Path) -> None:
    c = _catalog(tmp_path, variants=10)
    report = calibrate(c, max_queries=1000)
    mis = [m.misidentified for m in report.margins]
    amb = [m.ambiguous for m in report.margins]
    assert mis[0] > 0.01  # at margin 0 the variants are confused with each other
    assert mis == sorted(mis, reverse=True) and amb == sorted(amb)
    chosen = next(m for m in report.margins if m.margin == report.suggested_ambiguity_margin)
    assert chosen.misidentified <= 0.01 and report.suggested_ambiguity_margin > 0.005
    c.close()


def test_sampling_and_degenerate_catalogs(tmp_path: Path) -> None:
    c = _catalog(tmp_path / "a", variants=0)
    small = calibrate(c, max_queries=30, seed=1)
    assert small.queries == 30
    c.close()
    one = Catalog.open(tmp_path / "b", fingerprint="m", dim=DIM)
    one.upsert_product("only")
    one.add_references("only", [NewReference(unit(np.ones(DIM)))])
    report = calibrate(one)
    assert report.genuine == 0 and report.notes and "single product" in report.format_table()
    one.close()


def test_one_reference_per_product_says_false_rejects_are_not_measured(tmp_path: Path) -> None:
    c = Catalog.open(tmp_path, fingerprint="m", dim=DIM)
    _, refs = product_refs(12, 1, DIM, seed=3)
    for i in range(12):
        c.upsert_product(f"p{i}")
        c.add_references(f"p{i}", [NewReference(refs[i][0])])
    report = calibrate(c)
    c.close()
    assert report.genuine == 0 and report.impostors == 12
    assert all(r.false_reject is None and r.false_accept is not None for r in report.thresholds)
    text = report.format_table()
    rows = [line for line in text.splitlines() if line.startswith("| 0.") or line.startswith("| -")]
    assert rows and all(line.rstrip(" |").endswith("n/a") for line in rows)  # never "0.0%" for false reject
    assert "false reject NOT MEASURED" in text and "--labelled" in text


class _Current:
    unknown_threshold = 0.7
    ambiguity_margin = 0.02


def test_held_out_photos_by_hand() -> None:
    own = np.array([0.9, 0.8, 0.6, 0.4])  # the true product's score of four photos of catalog products
    other = np.array([0.5, 0.7, 0.65, 0.45])  # the best other product's score of the same photos
    out = np.array([0.5, 0.3])  # best scores of two photos of products not in the catalog
    report = calibrate_held_out(own, other, out, _Current(), products=3)
    assert (report.method, report.queries, report.genuine, report.out_of_catalog) == ("held-out", 6, 4, 2)
    # false accept <= 1 % needs t > 0.5 (0.501); false reject <= 5 % needs t <= 0.4: no t meets both, so the
    # equal-error point of the grid {0.3 0.4 0.5 0.6 0.8 0.9}: |FA - FR| is 0.25 at 0.5 (0.5 / 0.25) and at 0.6
    # (0 / 0.25); the tie goes to the lower of the two rates, 0.6
    assert report.suggested_unknown_threshold == 0.6
    row = next(r for r in report.thresholds if r.threshold == 0.6)
    assert (row.false_accept, row.false_reject) == (0.0, 0.25)
    assert any("equal-error" in n for n in report.notes)
    # gaps own - other: 0.4 0.1 -0.05 -0.05; no misidentification past a margin of 0.051
    assert report.suggested_ambiguity_margin == 0.051
    m = next(r for r in report.margins if r.margin == 0.051)
    assert (m.ambiguous, m.misidentified) == (0.5, 0.0)
    assert "held-out labelled photos (4 of 3 catalog products, 2 of products not in the catalog)" in (
        report.format_table())


def test_held_out_without_outside_photos_simulates_them() -> None:
    report = calibrate_held_out(np.array([0.9, 0.8, 0.6, 0.4]), np.array([0.5, 0.7, 0.65, 0.45]), np.array([]),
                                _Current(), products=3)
    assert report.impostors == 4 and any("simulated" in n for n in report.notes)
    # impostors = the other-product scores 0.5 0.7 0.65 0.45; genuine 0.9 0.8 0.6 0.4: false accepts equal false
    # rejects (2 of 4 each) at 0.65, the equal-error point
    assert report.suggested_unknown_threshold == 0.65
    row = next(r for r in report.thresholds if r.threshold == 0.65)
    assert (row.false_accept, row.false_reject) == (0.5, 0.5)


def test_held_out_from_catalog_searches(tmp_path: Path) -> None:
    """The whole offline path: new photos near the products' centres → search → held-out calibration."""
    c = _catalog(tmp_path, variants=0)
    centres, _ = product_refs(40, 3, DIM, seed=11)
    rng = np.random.default_rng(5)
    photos = unit(centres[:20] + rng.standard_normal((20, DIM)) * (0.9 / np.sqrt(DIM)))
    strangers = unit(rng.standard_normal((10, DIM)))
    results = c.search(np.vstack([photos, strangers]), top_k=10)
    queries = [query_from_result(r, f"p{i}" if i < 20 else None) for i, r in enumerate(results)]
    own, other, out = held_out_scores(queries)
    report = calibrate_held_out(own, other, out, c.settings, products=45)
    c.close()
    assert report.genuine == 20 and report.out_of_catalog == 10
    assert report.own_percentiles[50] > report.other_percentiles[50]  # own products score above strangers
