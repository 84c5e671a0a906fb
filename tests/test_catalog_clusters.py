"""`fit_clusters`: spherical k-means of catalog embeddings (FAISS) on seeded, well separated clusters."""

from __future__ import annotations

import numpy as np
import pytest
from catalog_helpers import unit

from skulens.catalog.clusters import fit_clusters


def three_clusters(per: int = 60, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centres [3, dim], points [3·per, dim]): three orthogonal directions, each with a little noise."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[:3]
    pts = unit(np.repeat(centres, per, axis=0) + 0.1 * rng.standard_normal((3 * per, dim)).astype(np.float32))
    return centres, pts


def test_centres_find_the_clusters_and_nearest_is_each_points_best_cosine() -> None:
    centres, pts = three_clusters()
    c = fit_clusters(pts, 3)
    assert c.centres.shape == (3, 32) and c.centres.dtype == np.float32
    assert np.allclose(np.linalg.norm(c.centres, axis=1), 1.0, atol=1e-5)
    # each true direction has one fitted centre within a few degrees of it
    assert sorted(np.argmax(centres @ c.centres.T, axis=1).tolist()) == [0, 1, 2]
    assert (centres @ c.centres.T).max(axis=1).min() > 0.98
    assert c.nearest == pytest.approx((pts @ c.centres.T).max(axis=1), abs=1e-6)
    assert c.nearest_cosine(pts[:5]) == pytest.approx(c.nearest[:5], abs=1e-6)
    # a point away from every cluster is far from every centre
    assert c.nearest_cosine(unit(np.eye(32, dtype=np.float32)[5:6]))[0] < 0.1


def test_small_and_empty_inputs() -> None:
    _, pts = three_clusters(per=2)
    assert len(fit_clusters(pts, 64).centres) == 6  # k is capped at the number of points
    one = fit_clusters(pts, 1)
    assert one.centres == pytest.approx(unit(pts.mean(axis=0, keepdims=True)), abs=1e-6)
    empty = fit_clusters(np.zeros((0, 32), np.float32), 8)
    assert empty.centres.shape == (0, 32) and len(empty.nearest) == 0
    assert np.isnan(empty.nearest_cosine(pts[:2])).all()


def test_a_fit_is_deterministic() -> None:
    _, pts = three_clusters(seed=4)
    a, b = fit_clusters(pts, 5), fit_clusters(pts, 5)
    assert np.array_equal(a.centres, b.centres)
