"""The drift detector's arithmetic on hand-made 2-d embeddings: every expected number is worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skulens.catalog.clusters import Clusters
from skulens.service.drift_options import DriftOptions
from skulens.service.drift_stats import (
    SCORE_BINS,
    Accum,
    Reference,
    State,
    cohen_h,
    describe,
    judge,
    level,
    merge,
    score_bins,
)

OPT = DriftOptions()  # watch: effect 0.2, z 3; drift: effect 0.5, z 5
C60, S60 = 0.5, math.sqrt(3) / 2  # cos / sin 60°


def rows(*vectors: tuple[float, float], times: int = 1) -> np.ndarray:
    return np.tile(np.array(vectors, dtype=np.float32), (times, 1))


def add(
    acc: Accum, vectors: np.ndarray, verdicts: list[int], scores: list[float], ref: Reference | None = None
) -> None:
    far = ref.far(vectors) if ref is not None else None
    acc.add(vectors, np.array(verdicts), np.array(scores), far, ref.fit_id if ref else -1)


def test_accum_shares_score_moments_quantiles_mean_and_spread() -> None:
    acc = Accum(2)
    add(acc, rows((1, 0), (0, 1), (1, 0), (0, 1)), [1, 1, 2, 3], [0.9, 0.8, 0.5, 0.7])
    assert acc.n == 4 and acc.verdicts.tolist() == [2, 1, 1]
    assert [acc.share(i) for i in range(3)] == [0.5, 0.25, 0.25]
    assert acc.score_mean == pytest.approx(0.725)
    # deviations .175, .075, -.225, -.025 → squares sum .0875, over n-1 = 3 → variance .029167
    assert acc.score_sd == pytest.approx(math.sqrt(0.0875 / 3))
    # sorted .5 .7 .8 .9: p10 → the 1st (bin [.50, .51) → centre .505), p50 → the 2nd, p90 → the 4th
    assert (acc.score_quantile(0.1), acc.score_quantile(0.5), acc.score_quantile(0.9)) == pytest.approx(
        (0.505, 0.705, 0.905)
    )
    assert acc.mean.tolist() == [0.5, 0.5]
    assert acc.spread == pytest.approx(math.sqrt(0.5))  # sqrt(1 - |(.5, .5)|²)
    share, judged = acc.far_share(-1)  # no reference fit: nothing judged far or near
    assert math.isnan(share) and judged == 0


def test_score_bins_clip_to_the_histogram() -> None:
    assert score_bins(np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 1.2])).tolist() == [0, 0, 100, 199, 199, 199]
    assert SCORE_BINS == 200


def test_empty_accum_has_no_figures() -> None:
    acc = Accum(3)
    assert math.isnan(acc.share(0)) and math.isnan(acc.score_mean) and math.isnan(acc.score_quantile(0.5))
    assert acc.score_sd == 0.0 and acc.spread == 1.0


def test_cohen_h_and_levels() -> None:
    assert cohen_h(0.0) == 0.0 and cohen_h(1.0) == pytest.approx(math.pi)
    assert cohen_h(0.5) - cohen_h(0.1) == pytest.approx(1.570796 - 0.643501, abs=1e-6)
    # both the effect and the z must reach a level; a threshold reached exactly counts
    assert level(0.5, 5.0, OPT) is State.DRIFT
    assert level(0.49, 50.0, OPT) is State.WATCH
    assert level(3.0, 4.99, OPT) is State.WATCH
    assert level(0.2, 3.0, OPT) is State.WATCH
    assert level(0.19, 30.0, OPT) is State.OK and level(5.0, 2.9, OPT) is State.OK
    assert level(math.nan, 10.0, OPT) is State.OK
    assert [s.level for s in State] == [0, 0, 1, 2]


def baseline_accum() -> Accum:
    """100 queries: half at +60°, half at -60° (mean (.5, 0), spread sin 60°); 90 KNOWN then 10 UNKNOWN;
    scores half .95, half .85 (mean .9, sd sqrt(100 · .05² / 99))."""
    b = Accum(2)
    add(b, rows((C60, S60), (C60, -S60), times=50), [1] * 90 + [2] * 10, [0.95, 0.85] * 50)
    return b


def test_judge_by_hand() -> None:
    base = baseline_accum()
    assert base.mean == pytest.approx([0.5, 0.0]) and base.spread == pytest.approx(S60)
    assert base.score_sd == pytest.approx(math.sqrt(100 * 0.05**2 / 99))
    # the reference: one centre at (1, 0); far = cosine to it under 0.9; the catalog's mean (.8, 0), spread .6
    ref = Reference(
        fit_id=7,
        mean=np.array([0.8, 0.0]),
        clusters=Clusters(np.array([[1.0, 0.0]], np.float32), np.zeros(0, np.float32)),
        far_cut=0.9,
        catalog_version=3,
        references=10,
        fitted_at=0.0,
        fit_seconds=0.0,
    )
    # the window: 100 queries, half at +60° (far: cos .5 < .9), half at 0° (not far); 50 KNOWN, 50 UNKNOWN;
    # every score .88
    win = Accum(2)
    add(win, rows((C60, S60), (1.0, 0.0), times=50), [1] * 50 + [2] * 50, [0.88] * 100, ref)
    w = judge(win, base, (0.1, 100), ref, OPT)
    g = {s.name: s for s in w.signals}
    root = math.sqrt(1 / 100 + 1 / 100)
    h = (2 * math.asin(math.sqrt(0.5))) - (2 * math.asin(math.sqrt(0.1)))  # 0.927295
    # shares: KNOWN .9 → .5 and UNKNOWN .1 → .5 are the same h on the arcsine scale; z = h / root = 6.557
    for name, value, base_value in (("known_share", 0.5, 0.9), ("unknown_share", 0.5, 0.1)):
        assert (g[name].value, g[name].baseline) == pytest.approx((value, base_value))
        assert (g[name].effect, g[name].z) == pytest.approx((h, h / root))
        assert g[name].state is State.DRIFT
    assert g["ambiguous_share"].effect == 0.0 and g["ambiguous_share"].state is State.OK
    # best score .9 → .88: d = .02 / .050252 = .398 (past the watch effect) but z = 2.81 < 3: OK
    d = 0.02 / math.sqrt(100 * 0.05**2 / 99)
    assert (g["best_score"].effect, g["best_score"].z) == pytest.approx((d, d / root))
    assert g["best_score"].state is State.OK
    # mean (.5, 0) → (.75, .433): shift |(.25, .433)| = .5, over the spread .866 = .577; z = 4.08: WATCH
    shift = 0.5 / S60
    assert (g["mean_shift"].value, g["mean_shift"].effect, g["mean_shift"].z) == pytest.approx(
        (shift, shift, shift / root)
    )
    assert g["mean_shift"].state is State.WATCH
    # far .1 → .5: h again, DRIFT
    assert (g["far_share"].value, g["far_share"].effect) == pytest.approx((0.5, h))
    assert g["far_share"].state is State.DRIFT
    # the window: its worst signal; distance of its mean from the catalog mean |(-.05, .433)| / .6
    assert w.state is State.DRIFT and w.queries == 100
    assert w.reference_distance == pytest.approx(math.sqrt(0.05**2 + (S60 / 2) ** 2) / 0.6)
    assert (w.score_p10, w.score_p50, w.score_p90) == pytest.approx((0.885, 0.885, 0.885))
    assert w.mean_shift == pytest.approx(shift) and w.far_share == pytest.approx(0.5)


def test_the_same_distribution_is_ok_and_small_windows_need_larger_effects() -> None:
    base = baseline_accum()
    same = Accum(2)
    add(same, rows((C60, S60), (C60, -S60), times=50), [1] * 90 + [2] * 10, [0.95, 0.85] * 50)
    w = judge(same, base, (math.nan, 0), None, OPT)
    assert w.state is State.OK and all(s.effect == pytest.approx(0.0, abs=1e-9) for s in w.signals[:5])
    assert math.isnan(w.far_share) and math.isnan(w.reference_distance)  # no reference fitted: not judged
    # 4 queries all UNKNOWN: h(1) - h(.1) = 2.498 is a large effect, but z = 2.498 / sqrt(1/4 + 1/100) = 4.90
    tiny = Accum(2)
    add(tiny, rows((C60, S60), times=4), [2] * 4, [0.9] * 4)
    g = {s.name: s for s in judge(tiny, base, (math.nan, 0), None, OPT).signals}
    assert g["unknown_share"].z == pytest.approx((math.pi - 2 * math.asin(math.sqrt(0.1))) / math.sqrt(0.26))
    assert g["unknown_share"].state is State.WATCH


def test_score_spread_floor() -> None:
    # a baseline whose best scores never vary: the spread is taken as 0.01, so .995 → .985 is d = 1
    base, win = Accum(2), Accum(2)
    add(base, rows((1.0, 0.0), times=100), [1] * 100, [0.995] * 100)
    add(win, rows((1.0, 0.0), times=100), [1] * 100, [0.985] * 100)
    g = {s.name: s for s in judge(win, base, (math.nan, 0), None, OPT).signals}
    assert g["best_score"].effect == pytest.approx(1.0) and g["best_score"].state is State.DRIFT


def test_merge_keeps_far_counts_of_the_current_fit_only() -> None:
    ref_a = Reference(
        1, np.array([1.0, 0.0]), Clusters(np.array([[1.0, 0.0]], np.float32), np.zeros(0)), 0.9, 1, 1, 0.0, 0.0
    )
    ref_b = Reference(
        2, np.array([1.0, 0.0]), Clusters(np.array([[0.0, 1.0]], np.float32), np.zeros(0)), 0.9, 2, 1, 0.0, 0.0
    )
    s1, s2 = Accum(2, opened=10.0, closed=20.0), Accum(2, opened=20.0, closed=30.0)
    add(s1, rows((1.0, 0.0), times=4), [1] * 4, [0.9] * 4, ref_a)  # under fit 1: none far
    add(s2, rows((1.0, 0.0), times=2), [1] * 2, [0.9] * 2, ref_b)  # under fit 2: both far
    m = merge([s1, s2], 2, fit_id=2)
    assert (m.n, m.opened, m.closed) == (6, 10.0, 30.0)
    assert m.far_share(2) == (1.0, 2) and math.isnan(m.far_share(1)[0])
    # a slice that saw a refit restarts its far counts under the new fit
    s1.add(rows((1.0, 0.0)), np.array([1]), np.array([0.9]), ref_b.far(rows((1.0, 0.0))), 2)
    assert s1.far_share(2) == (1.0, 1)


def test_reference_fit_far_cut_and_distance() -> None:
    sample = rows((1.0, 0.0), (0.0, 1.0), times=2)
    clusters = Clusters(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([1.0, 1.0, 0.5, 0.7], np.float32))
    ref = Reference.fit(3, sample, clusters, OPT, catalog_version=9, fitted_at=1.0, fit_seconds=0.5)
    # the far cut: the 5th percentile of .5, .7, 1, 1 (linear) = .5 + .15 · .2 = .53
    assert ref.far_cut == pytest.approx(0.53) and ref.k == 2 and ref.references == 4
    assert ref.mean.tolist() == [0.5, 0.5] and ref.spread == pytest.approx(math.sqrt(0.5))
    assert ref.far(rows((C60, S60), (0.6, 0.8))).tolist() == [False, False]
    assert ref.far(rows((0.5, -S60))).tolist() == [True]  # cosines .5 and -.87 to the centres, both under .53
    assert ref.distance(np.array([0.5, 0.5]), OPT.spread_floor) == 0.0
    # with the cosines of references the fit did not see (.866 and .8), the cut is their 5th percentile
    held = Reference.fit(4, sample, clusters, OPT, 9, 1.0, 0.5, far_cosines=np.array([S60, 0.8]))
    assert held.far_cut == pytest.approx(0.8 + 0.05 * (S60 - 0.8))
    base = baseline_accum()
    assert describe(base, ref, (0.25, 4), OPT).far_share == 0.25
