"""The catalog-adapted head: incremental statistics equal a from-scratch fit, the closed form is the ridge solution,
and re-ranking decides verdicts on the adapted scores."""

from __future__ import annotations

import numpy as np
import pytest
from catalog_helpers import product_refs, unit

from skulens.catalog.head import HeadModel, HeadSettings, HeadStats, apply_delta, deltas, rerank
from skulens.catalog.models import Match, SearchResult, Verdict

DIM = 16


def test_accumulated_deltas_equal_the_statistics_from_scratch() -> None:
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((40, DIM)))
    keys = rng.integers(0, 5, 40)
    count, total, gram = 0, np.zeros(DIM), np.zeros((DIM, DIM))
    for lo in range(0, 40, 7):  # added in batches ...
        part = slice(lo, lo + 7)
        count, total, gram = apply_delta(count, total, gram, deltas(keys[part], x[part], [1] * len(x[part])))
    gone = [3, 11, 12, 30]  # ... then some removed
    count, total, gram = apply_delta(count, total, gram, deltas(keys[gone], x[gone], [-1] * len(gone)))
    keep = np.setdiff1d(np.arange(40), gone)
    want = HeadStats.from_embeddings("fp", [str(k) for k in keys[keep]], x[keep])
    assert count == want.count == 36
    np.testing.assert_allclose(total, want.total, atol=1e-12)
    np.testing.assert_allclose(gram, want.gram, atol=1e-12)
    d = deltas(keys[gone], x[gone], [-1] * len(gone))
    assert sum(p.count for p in d.products.values()) == -4


def test_the_fit_is_the_closed_form_ridge_solution() -> None:
    _, refs = product_refs(6, 5, DIM, seed=1)
    x = refs.reshape(-1, DIM).astype(np.float64)
    labels = [f"p{i}" for i in range(6) for _ in range(5)]
    settings = HeadSettings(ridge=0.3, weight=0.5, min_references=3)
    model = HeadModel.fit(HeadStats.from_embeddings("fp", labels, x), settings)
    # reference: ridge regression of one-hot targets on centred embeddings, written out directly
    mu = x.mean(0)
    xc = x - mu
    lam = 0.3 * np.trace(xc.T @ xc) / DIM
    y = np.asarray([[lab == f"p{i}" for i in range(6)] for lab in labels], dtype=np.float64)
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(DIM), xc.T @ y)
    centroids = np.stack([x[i * 5:(i + 1) * 5].sum(0) for i in range(6)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    q = unit(np.random.default_rng(2).standard_normal((3, DIM)))
    want = (q @ centroids.T + 0.5 * ((q - mu) @ w)) / 1.5
    got = model.score(q, [[f"p{i}" for i in range(6)]] * 3, [[0.0] * 6] * 3)
    np.testing.assert_allclose(np.asarray(got), np.clip(want, -1, 1), atol=1e-5)
    assert model.products == 6


def test_products_with_too_few_references_get_their_centroid_cosine_only() -> None:
    _, refs = product_refs(3, 4, DIM, seed=3)
    labels = ["a"] * 4 + ["b"] * 4 + ["c"] * 2
    x = np.concatenate([refs[0], refs[1], refs[2, :2]])
    model = HeadModel.fit(HeadStats.from_embeddings("fp", labels, x), HeadSettings(min_references=3))
    assert sorted(model.index) == ["a", "b", "c"] and model.ridge_products == 2
    q = refs[2, 2:3]
    got = model.score(q, [["a", "c", "zzz"]], [[0.1, 0.77, 0.5]])[0]
    centroid_c = refs[2, :2].astype(np.float64).sum(0)
    assert got[1] == pytest.approx(float(q[0] @ (centroid_c / np.linalg.norm(centroid_c))), abs=1e-5)
    assert got[2] == 0.5  # a product the head does not know (enrolled after the fit): its NN score as given
    assert got[0] != 0.1


def test_augmented_views_count_in_the_centroid_not_as_references() -> None:
    _, refs = product_refs(2, 6, DIM, seed=5)
    # product a: 1 reference + 5 augmented views; b: 6 references
    stats = HeadStats.from_embeddings("fp", ["a"] * 6 + ["b"] * 6, refs.reshape(-1, DIM),
                                      references=[1, 0, 0, 0, 0, 0] + [1] * 6)
    assert (stats.products["a"].count, stats.products["a"].references) == (6, 1)
    model = HeadModel.fit(stats, HeadSettings(min_references=3))
    assert model.ridge_products == 0  # one product with enough references: nothing for a ridge to tell apart
    q = refs[0, 3:4]
    mean_a = refs[0].astype(np.float64).sum(0)
    assert model.score(q, [["a"]], [[0.0]])[0][0] == pytest.approx(
        float(q[0] @ (mean_a / np.linalg.norm(mean_a))), abs=1e-5)


def test_an_empty_catalog_has_no_head() -> None:
    model = HeadModel.fit(HeadStats("fp", DIM), HeadSettings())
    assert model.products == 0 and model.ridge_products == 0
    assert model.score(np.zeros((1, DIM)), [["a"]], [[0.4]]) == [[0.4]]


def test_rerank_sorts_decides_and_cuts_on_the_adapted_scores() -> None:
    centres, refs = product_refs(4, 6, DIM, seed=4, noise=0.1)
    labels = [f"p{i}" for i in range(4) for _ in range(6)]
    model = HeadModel.fit(HeadStats.from_embeddings("fp", labels, refs.reshape(-1, DIM)), HeadSettings())
    q = centres[2:3]
    # the nearest-neighbour order puts p0 first (a wrong, inflated score): the head puts p2 back on top
    nn = SearchResult([Match("p0", "P0", 0.99, 1), Match("p2", "P2", 0.5, 13), Match("p1", "P1", 0.4, 7)],
                      Verdict.KNOWN, 0.99)
    [out] = rerank([nn], q, model, top_k=2, min_score=None, unknown_threshold=0.5, ambiguity_margin=0.02)
    adapted = dict(zip(["p0", "p2", "p1"], model.score(q, [["p0", "p2", "p1"]], [[0.99, 0.5, 0.4]])[0], strict=True))
    assert [m.product_id for m in out.matches] == sorted(adapted, key=lambda p: -adapted[p])[:2]
    assert out.matches[0].product_id == "p2" and out.matches[0].score == pytest.approx(adapted["p2"])
    assert out.matches[0].reference_id == 13  # the product's best reference id is kept
    assert len(out.matches) == 2 and out.best_score == out.matches[0].score
    assert out.verdict is Verdict.KNOWN
    [unknown] = rerank([nn], q, model, top_k=2, min_score=None, unknown_threshold=0.999, ambiguity_margin=0.02)
    assert unknown.verdict is Verdict.UNKNOWN
    [amb] = rerank([nn], q, model, top_k=3, min_score=None, unknown_threshold=0.0, ambiguity_margin=2.0)
    assert amb.verdict is Verdict.AMBIGUOUS and amb.confusable[0] == "p2" and len(amb.confusable) == 3
    [floor] = rerank([nn], q, model, top_k=3, min_score=out.matches[0].score, unknown_threshold=0.0,
                     ambiguity_margin=0.0)
    assert [m.product_id for m in floor.matches] == ["p2"]
    [none] = rerank([SearchResult([], Verdict.UNKNOWN, -1.0)], q, model, top_k=3, min_score=None,
                    unknown_threshold=0.5, ambiguity_margin=0.02)
    assert none.matches == [] and none.verdict is Verdict.UNKNOWN and none.best_score == -1.0


@pytest.mark.parametrize("bad", [{"ridge": 0.0}, {"weight": -1.0}, {"min_references": 0}, {"candidates": 0},
                                 {"refit_seconds": -1.0}])
def test_settings_refuse_out_of_range_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HeadSettings(**bad)  # type: ignore[arg-type]

