"""Recognition quality on a labelled query set: pure functions over per-query answers (no model, no store).

Each query is a photo whose true product is known, or known to be outside the catalog, with the answer the
service gave: products best first with their scores, the verdict, the best score and the margin to the next
product. From those:

- top-1 / top-5 accuracy over the in-catalog queries, overall and per group (e.g. the product's category);
- the verdict table: for KNOWN / UNKNOWN / AMBIGUOUS, how many answers were right (top-1 is the true product),
  wrong (another product), or of a product that is not in the catalog;
- curves over the unknown threshold t (a query is *accepted* when its best score >= t): coverage (accepted share
  of all queries), accuracy of the accepted ones, false accept (share of out-of-catalog queries accepted), false
  reject (share of in-catalog queries rejected) and accepted-and-correct (share of in-catalog queries accepted
  with the right product);
- the AUROC of the best score as a test of in- against out-of-catalog queries (ties count one half);
- the operating point for a target false-accept rate: the lowest unknown threshold whose false accepts stay
  within it, the accepted-and-correct share there, and the smallest ambiguity margin that keeps wrong-product
  KNOWN answers within the same target;
- the most confused product pairs (true product → the product it was taken for).

A suggested value lies half-way between the last observed score it must exclude and the next observed one above,
so float rounding of a reported score does not move a query across it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from skulens.catalog.models import SearchResult, Verdict

if TYPE_CHECKING:
    from skulens.catalog.backend import CatalogBackend

VERDICTS = (Verdict.KNOWN, Verdict.UNKNOWN, Verdict.AMBIGUOUS)
NO_GROUP = "(no group)"


@dataclass(frozen=True)
class Query:
    """One labelled query and the answer it got.

    `truth`: the true product id, None when the photo shows a product that is not in the catalog. `ranked` /
    `scores`: the answer's products best first and their scores. `margin`: best score minus the next product's
    (`math.inf` when the answer has no second product). `group`: where the query counts in the per-group table
    ("" = no group).
    """

    truth: str | None
    ranked: tuple[str, ...]
    scores: tuple[float, ...]
    verdict: Verdict
    best_score: float
    margin: float
    group: str = ""
    id: str = ""

    @property
    def in_catalog(self) -> bool:
        """Whether the photo shows a catalog product."""
        return self.truth is not None

    @property
    def correct(self) -> bool:
        """Whether the best product is the true one."""
        return self.truth is not None and self.ranked[:1] == (self.truth,)

    def in_top(self, k: int) -> bool:
        """Whether the true product is among the first `k`."""
        return self.truth is not None and self.truth in self.ranked[:k]


def query_from_result(result: SearchResult, truth: str | None, group: str = "", id: str = "") -> Query:
    """A `Query` from a catalog search answer."""
    ranked = tuple(m.product_id for m in result.matches)
    scores = tuple(float(m.score) for m in result.matches)
    margin = scores[0] - scores[1] if len(scores) >= 2 else math.inf
    return Query(truth, ranked, scores, result.verdict, float(result.best_score), margin, group, id)


@dataclass(frozen=True)
class TopK:
    """Top-1 / top-5 accuracy over `queries` in-catalog queries (shares in [0, 1]; 0.0 when there are none)."""

    queries: int
    top1: float
    top5: float


@dataclass(frozen=True)
class VerdictRow:
    """How the answers with one verdict split: right product, wrong product, product not in the catalog."""

    verdict: Verdict
    right: int
    wrong: int
    out_of_catalog: int


@dataclass(frozen=True)
class CurvePoint:
    """The figures when every query with best score >= `threshold` is accepted (None: not measurable here)."""

    threshold: float
    coverage: float
    accuracy: float | None
    false_accept: float | None
    false_reject: float | None
    accepted_correct: float | None


@dataclass(frozen=True)
class ConfusedPair:
    """In-catalog queries of `product_id` whose best answer was `taken_for`."""

    product_id: str
    taken_for: str
    count: int


@dataclass(frozen=True)
class OperatingPoint:
    """Suggested thresholds for a target false-accept rate and what they give on this set.

    `unknown_threshold` is None when the set has no out-of-catalog query (false accepts cannot be measured);
    `ambiguity_margin` is None when no margin keeps wrong-product KNOWN answers within the target. The shares are
    those of KNOWN answers with both thresholds applied (None: not measurable).
    """

    target_false_accept: float
    unknown_threshold: float | None
    ambiguity_margin: float | None
    false_accept: float | None
    false_reject: float | None
    misidentified: float | None
    accepted_correct: float | None
    coverage: float


@dataclass(frozen=True)
class EvaluationReport:
    """Everything `evaluate` measures; shares are in [0, 1]."""

    queries: int
    in_catalog: int
    out_of_catalog: int
    overall: TopK
    groups: dict[str, TopK]
    verdicts: list[VerdictRow]
    curve: list[CurvePoint]
    auroc: float | None
    accepted_correct_at_target: float | None  # threshold only (no margin), at the operating point's threshold
    operating: OperatingPoint
    confused: list[ConfusedPair]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (verdicts by name)."""
        out = asdict(self)
        for row in out["verdicts"]:
            row["verdict"] = row["verdict"].value
        return out


# ---------------------------------------------------------------------------------------------- helpers
def _share(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _count_at_least(sorted_values: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """How many of `sorted_values` (ascending) are >= each t."""
    return len(sorted_values) - np.searchsorted(sorted_values, t, side="left")


def auroc(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties counted one half; None when either side is empty."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    if not len(pos) or not len(neg):
        return None
    below = np.searchsorted(neg, pos, side="left")
    tied = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(pos) * len(neg)))


def lowest_cut(values: np.ndarray, allowed: int, candidates: np.ndarray, floor: float) -> float | None:
    """The lowest cut c such that at most `allowed` of `values` are >= c: `floor` when no value needs excluding,
    else half-way between the highest value it must exclude and the next candidate above it (that value + 1e-6
    when there is none); None when no finite cut does it (a value to exclude is infinite)."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    if allowed >= len(v):
        return floor
    must_exclude = float(v[allowed])
    if not math.isfinite(must_exclude):
        return None
    above = candidates[(candidates > must_exclude) & np.isfinite(candidates)]
    return (must_exclude + float(above.min())) / 2.0 if len(above) else must_exclude + 1e-6


def _allowed(target: float, n: int) -> int:
    return math.floor(target * n + 1e-9)


def _curve(best: np.ndarray, inside: np.ndarray, correct: np.ndarray, points: int) -> list[CurvePoint]:
    """The curves at every observed best score (highest first), thinned to at most `points` points."""
    n, n_in = len(best), int(inside.sum())
    n_out = n - n_in
    if not n:
        return []
    thresholds = np.unique(best)[::-1]
    if len(thresholds) > points > 1:
        keep = np.unique(np.round(np.linspace(0, len(thresholds) - 1, points)).astype(np.int64))
        thresholds = thresholds[keep]
    s_in, s_out, s_ok = np.sort(best[inside]), np.sort(best[~inside]), np.sort(best[correct])
    acc_in, acc_out, acc_ok = (_count_at_least(s, thresholds) for s in (s_in, s_out, s_ok))
    out = []
    for t, a_in, a_out, a_ok in zip(
        thresholds.tolist(), acc_in.tolist(), acc_out.tolist(), acc_ok.tolist(), strict=True
    ):
        accepted = a_in + a_out
        out.append(
            CurvePoint(
                threshold=float(t),
                coverage=accepted / n,
                accuracy=_share(a_ok, accepted),
                false_accept=_share(a_out, n_out),
                false_reject=_share(n_in - a_in, n_in),
                accepted_correct=_share(a_ok, n_in),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(
    queries: Sequence[Query],
    *,
    target_false_accept: float = 0.05,
    current_unknown_threshold: float = 0.0,
    confused_pairs: int = 10,
    curve_points: int = 101,
) -> EvaluationReport:
    """Measure a labelled query set (see the module docstring for every figure).

    `current_unknown_threshold`: the threshold the ambiguity margin is fitted under when the set cannot suggest
    one (no out-of-catalog queries)."""
    if not 0.0 < target_false_accept < 1.0:
        raise ValueError(f"target_false_accept must be in (0, 1), got {target_false_accept}")
    n = len(queries)
    inside = np.fromiter((q.in_catalog for q in queries), dtype=bool, count=n)
    correct = np.fromiter((q.correct for q in queries), dtype=bool, count=n)
    best = np.fromiter((q.best_score for q in queries), dtype=np.float64, count=n)
    margin = np.fromiter((q.margin for q in queries), dtype=np.float64, count=n)
    n_in, n_out = int(inside.sum()), int(n - inside.sum())
    notes: list[str] = []
    if not n_out:
        notes.append(
            "no out-of-catalog queries: false accepts, the AUROC and the unknown threshold for the target "
            "cannot be measured (add photos of products that are not in the catalog)"
        )
    if not n_in:
        notes.append("no in-catalog queries: accuracy, false rejects and the ambiguity margin cannot be measured")

    def topk(qs: Sequence[Query]) -> TopK:
        m = len(qs)
        return TopK(m, sum(q.correct for q in qs) / m if m else 0.0, sum(q.in_top(5) for q in qs) / m if m else 0.0)

    by_group: dict[str, list[Query]] = defaultdict(list)
    for q in queries:
        if q.in_catalog:
            by_group[q.group or NO_GROUP].append(q)
    groups = {g: topk(qs) for g, qs in sorted(by_group.items())} if set(by_group) != {NO_GROUP} else {}

    verdicts = [
        VerdictRow(
            v,
            sum(1 for q in queries if q.verdict is v and q.correct),
            sum(1 for q in queries if q.verdict is v and q.in_catalog and not q.correct),
            sum(1 for q in queries if q.verdict is v and not q.in_catalog),
        )
        for v in VERDICTS
    ]

    # the unknown threshold for the target: lowest cut with at most `allowed` out-of-catalog queries accepted
    threshold = lowest_cut(best[~inside], _allowed(target_false_accept, n_out), best, -1.0) if n_out else None
    at_target = _share(int((correct & (best >= threshold)).sum()), n_in) if threshold is not None else None
    # the ambiguity margin: lowest cut on the margins of the accepted wrong answers (in-catalog, wrong product)
    t = threshold if threshold is not None else current_unknown_threshold
    accepted = best >= t
    wrong = inside & ~correct & accepted
    margin_cut = lowest_cut(margin[wrong], _allowed(target_false_accept, n_in), margin[accepted], 0.0) if n_in else None
    if margin_cut is None and n_in:
        notes.append(
            "no ambiguity margin keeps wrong-product answers within the target: some wrong answers had no "
            "second product to compare with (raise top_k)"
        )
    known = accepted & (margin >= margin_cut if margin_cut is not None else True)
    operating = OperatingPoint(
        target_false_accept=target_false_accept,
        unknown_threshold=threshold,
        ambiguity_margin=margin_cut,
        false_accept=_share(int((known & ~inside).sum()), n_out),
        false_reject=_share(int((inside & ~known).sum()), n_in),
        misidentified=_share(int((known & inside & ~correct).sum()), n_in),
        accepted_correct=_share(int((known & correct).sum()), n_in),
        coverage=float(known.mean()) if n else 0.0,
    )

    pairs = Counter((q.truth, q.ranked[0]) for q in queries if q.in_catalog and q.ranked and not q.correct)
    confused = [
        ConfusedPair(str(a), b, c)
        for (a, b), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:confused_pairs]
    ]
    return EvaluationReport(
        queries=n,
        in_catalog=n_in,
        out_of_catalog=n_out,
        overall=topk([q for q in queries if q.in_catalog]),
        groups=groups,
        verdicts=verdicts,
        curve=_curve(best, inside, correct, curve_points),
        auroc=auroc(best[inside], best[~inside]),
        accepted_correct_at_target=at_target,
        operating=operating,
        confused=confused,
        notes=notes,
    )


def held_out_scores(queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(own, other, out) score arrays for threshold calibration on held-out photos.

    For each in-catalog query: own = the true product's score (-1.0 when it is not among the ranked products),
    other = the best score among the other products (-1.0 when there is none). out = the best score of each
    out-of-catalog query.
    """
    own, other, out = [], [], []
    for q in queries:
        if not q.in_catalog:
            out.append(q.best_score)
            continue
        mine = [s for p, s in zip(q.ranked, q.scores, strict=True) if p == q.truth]
        theirs = [s for p, s in zip(q.ranked, q.scores, strict=True) if p != q.truth]
        own.append(mine[0] if mine else -1.0)
        other.append(theirs[0] if theirs else -1.0)
    return np.asarray(own, dtype=np.float64), np.asarray(other, dtype=np.float64), np.asarray(out, dtype=np.float64)


def catalog_categories(catalog: CatalogBackend) -> dict[str, str]:
    """product id → category of every product of `catalog` (to tell labels outside it, and to group by category)."""
    out: dict[str, str] = {}
    token = ""
    while True:
        products, token = catalog.list_products(page_size=catalog.settings.max_page_size, page_token=token)
        out.update((p.product_id, p.category) for p in products)
        if not token:
            return out
