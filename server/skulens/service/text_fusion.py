"""SearchByText's keyword and hybrid answers, as pure functions of the lists the catalog returned.

- KEYWORD: a product's score is r / (1 + r), r >= 0 the backend's relevance (`TextMatch.relevance`): in [0, 1),
  monotone in r, not a cosine. Verdict KNOWN when a product matches, UNKNOWN when none does.
- HYBRID: reciprocal-rank fusion (Cormack et al., 2009) of the VECTOR answer and the keyword list: a product's value
  is the sum over the lists it is in of 1 / (k + rank), rank from 1, k = 60 (`RRF_K`); its score is that value over
  the most two lists can give (2 / (k + 1)), so 1.0 means first in both and 0.5 first in one only. Verdict KNOWN
  when the keyword list has a match, else the vector answer's. Ties: the better vector rank, then product id.
"""

from __future__ import annotations

from collections.abc import Sequence

from skulens.catalog.models import Match, SearchResult, TextMatch, Verdict

RRF_K = 60  # the usual reciprocal-rank-fusion constant
MIN_DEPTH = 20  # products each list of a HYBRID search contributes at least (fusion needs more than top_k)


def candidate_depth(top_k: int, max_top_k: int) -> int:
    """How many products each list of a HYBRID search is searched to: max(2 x top_k, 20), at most max_top_k."""
    return max(top_k, min(max_top_k, max(2 * top_k, MIN_DEPTH)))


def keyword_score(relevance: float) -> float:
    """A keyword match's score: r / (1 + r) for relevance r (negative r counts as 0)."""
    r = max(0.0, float(relevance))
    return r / (1.0 + r)


def keyword_result(hits: Sequence[TextMatch], top_k: int, min_score: float | None = None) -> SearchResult:
    """A KEYWORD answer: the first `top_k` hits (best first) scored by `keyword_score`, those under `min_score`
    dropped; KNOWN when there is a hit (best_score: the first hit's score), else UNKNOWN (best_score -1)."""
    matches = [Match(h.product_id, h.display_name, keyword_score(h.relevance), 0) for h in hits[:top_k]]
    if not matches:
        return SearchResult([], Verdict.UNKNOWN, -1.0)
    best = matches[0].score
    kept = [m for m in matches if min_score is None or m.score >= min_score]
    return SearchResult(kept, Verdict.KNOWN, best)


def fuse(vector: SearchResult, keyword: Sequence[TextMatch], top_k: int, min_score: float | None = None,
         k: int = RRF_K) -> SearchResult:
    """A HYBRID answer: reciprocal-rank fusion of the vector answer's matches and the keyword hits (module doc),
    the first `top_k` products, those whose fused score is under `min_score` dropped."""
    fused: dict[str, float] = {}
    vector_rank: dict[str, int] = {}
    names: dict[str, str] = {}
    references: dict[str, int] = {}
    for rank, m in enumerate(vector.matches, start=1):
        fused[m.product_id] = fused.get(m.product_id, 0.0) + 1.0 / (k + rank)
        vector_rank[m.product_id] = rank
        names[m.product_id] = m.display_name
        references[m.product_id] = m.reference_id
    for rank, h in enumerate(keyword, start=1):
        fused[h.product_id] = fused.get(h.product_id, 0.0) + 1.0 / (k + rank)
        names.setdefault(h.product_id, h.display_name)
    scale = 2.0 / (k + 1)
    order = sorted(fused, key=lambda p: (-fused[p], vector_rank.get(p, len(vector_rank) + 1), p))[:top_k]
    matches = [Match(p, names[p], fused[p] / scale, references.get(p, 0)) for p in order]
    if not matches:
        return SearchResult([], vector.verdict if vector.matches else Verdict.UNKNOWN, -1.0)
    best = matches[0].score
    kept = [m for m in matches if min_score is None or m.score >= min_score]
    if keyword:
        return SearchResult(kept, Verdict.KNOWN, best)
    return SearchResult(kept, vector.verdict, best, list(vector.confusable))
