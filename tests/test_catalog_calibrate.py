"""skulens.catalog.calibrate: leave-one-out threshold / margin suggestions from the catalog itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from catalog_helpers import product_refs, unit

from skulens.catalog import Catalog, CatalogSettings, NewReference, calibrate

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
