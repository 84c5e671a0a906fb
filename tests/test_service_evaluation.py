"""Evaluate over a real server (port 0, random-weights ViT-B/32, SQLite catalog in tmp): the report equals the
figures computed from `Recognize` answers on the same photos; labels outside the catalog, failed photos, groups;
refused streams (options late, regions, too many photos); the limit in GetServerInfo; the scope."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image, rpc_error

from skulens.catalog.evaluation import Query, evaluate
from skulens.catalog.models import Verdict
from skulens.client.client import SkulensClient, image_input, search_options
from skulens.v1 import catalog_pb2, common_pb2, recognition_pb2

pb = recognition_pb2
N = 6
CATEGORY = {f"p{i}": "even" if i % 2 == 0 else "odd" for i in range(N)}
C = grpc.StatusCode
READER, WRITER = "reader-token-0123456789", "writer-token-0123456789"
VERDICT = {
    common_pb2.VERDICT_KNOWN: Verdict.KNOWN,
    common_pb2.VERDICT_UNKNOWN: Verdict.UNKNOWN,
    common_pb2.VERDICT_AMBIGUOUS: Verdict.AMBIGUOUS,
}


@pytest.fixture(scope="module")
def server(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("evaluate") / "data",
        max_images_per_request=8,
        max_evaluation_images=40,
        tokens=f"{READER}=recognize;{WRITER}=catalog:write",
    )
    srv = RunningServer(settings, SHARED.engine(clip_model_dir))
    with srv.client(token=WRITER) as c:
        for pid, cat in CATEGORY.items():
            c.upsert_product(pid, category=cat)
        resp = c.add_references(
            catalog_pb2.AddReferenceImagesRequest(product_id=f"p{i}", content=pattern_image(i)) for i in range(N)
        )
        assert resp.added == N, resp
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: RunningServer) -> Iterator[SkulensClient]:
    with server.client(token=READER) as c:
        yield c


def labelled_set() -> list[pb.LabelledImage]:
    """Two new photos of each product, three of products outside the catalog, one labelled with a product id the
    catalog does not hold, one photo that is not an image, one with an explicit group, and a photo of p2 labelled
    p1 (a wrong answer)."""
    items = [
        pb.LabelledImage(image=image_input(pattern_image(i, variant=v), id=f"p{i}-{v}"), product_id=f"p{i}")
        for i in range(N)
        for v in (1, 2)
    ]
    items += [pb.LabelledImage(image=image_input(pattern_image(100 + j), id=f"out-{j}")) for j in range(3)]
    items.append(pb.LabelledImage(image=image_input(pattern_image(200), id="ghost"), product_id="ghost"))
    items.append(pb.LabelledImage(image=image_input(b"not an image", id="broken"), product_id="p0"))
    items.append(
        pb.LabelledImage(image=image_input(pattern_image(3, variant=3), id="tagged"), product_id="p3", group="special")
    )
    items.append(pb.LabelledImage(image=image_input(pattern_image(2, variant=4), id="mislabelled"), product_id="p1"))
    return items


def stream(items: list[pb.LabelledImage], per: int = 5, **options: object) -> Iterator[pb.EvaluateRequest]:
    for at in range(0, len(items), per):
        msg = pb.EvaluateRequest(images=items[at : at + per])
        if at == 0 and options:
            msg.options.CopyFrom(pb.EvaluateOptions(**options))  # type: ignore[arg-type]
        yield msg


def test_report_equals_the_figures_of_recognize_answers(client: SkulensClient) -> None:
    items = labelled_set()
    resp = client.evaluate(stream(items, include_queries=True, target_false_accept=0.25))
    r = resp.report
    good = [it for it in items if it.image.id != "broken"]
    assert (r.queries, r.failed, r.unlisted_products) == (len(good), 1, 1)
    assert (r.in_catalog, r.out_of_catalog) == (2 * N + 2, 4)
    assert [(c.product_id, c.taken_for, c.count) for c in r.confused_pairs] == [("p1", "p2", 1)]
    assert [f.id for f in r.failures] == ["broken"] and r.failures[0].status.code == C.INVALID_ARGUMENT.value[0]
    assert (
        "photos labelled with a product id the catalog does not hold: 1 (counted as products outside the catalog)"
        in (r.notes)
    )
    assert "photos that could not be recognised: 1 (left out of every figure)" in r.notes
    assert [q.id for q in resp.queries] == [it.image.id for it in items]  # stream order, the failed one included
    assert {g.group for g in r.groups} == {"even", "odd", "special"}  # catalog categories, and the explicit group
    assert resp.model_fingerprint and resp.random_weights and resp.catalog_version > 0

    # the same photos through Recognize, the figures computed by the pure module
    answers = [
        res
        for at in range(0, len(good), 8)
        for res in client.recognize([it.image for it in good[at : at + 8]], search_options(top_k=5)).results
    ]
    queries = []
    for it, res in zip(good, answers, strict=True):
        rec = res.recognition
        scores = tuple(m.score for m in rec.matches)
        truth = it.product_id if it.product_id in CATEGORY else None
        group = it.group or (CATEGORY[truth] if truth else "")
        margin = scores[0] - scores[1] if len(scores) > 1 else math.inf
        queries.append(
            Query(
                truth,
                tuple(m.product_id for m in rec.matches),
                scores,
                VERDICT[rec.verdict],
                rec.best_score,
                margin,
                group,
            )
        )
    want = evaluate(queries, target_false_accept=0.25, current_unknown_threshold=0.7)
    assert (r.overall.queries, r.overall.top1, r.overall.top5) == pytest.approx(
        (want.overall.queries, want.overall.top1, want.overall.top5)
    )
    assert [(g.group, g.accuracy.top1, g.accuracy.top5) for g in r.groups] == [
        (g, pytest.approx(t.top1), pytest.approx(t.top5)) for g, t in want.groups.items()
    ]
    assert [(v.right, v.wrong, v.out_of_catalog) for v in r.verdicts] == [
        (v.right, v.wrong, v.out_of_catalog) for v in want.verdicts
    ]
    assert r.auroc == pytest.approx(want.auroc, abs=1e-6)
    assert len(r.curve) == len(want.curve)
    op = r.operating_point
    assert op.HasField("unknown_threshold") and op.unknown_threshold == pytest.approx(
        want.operating.unknown_threshold, abs=1e-5
    )
    assert r.accepted_correct_at_target == pytest.approx(want.accepted_correct_at_target)
    assert op.false_accept <= 0.25 + 1e-9
    assert r.thresholds.unknown_threshold == pytest.approx(0.7)
    correct = {q.id: q.correct for q in resp.queries if q.status.code == 0}
    assert sum(correct.values()) == round(r.overall.top1 * r.overall.queries)


def test_refused_streams(client: SkulensClient, clip_model_dir: Path, tmp_path: Path) -> None:
    items = labelled_set()
    late = list(stream(items[:2], per=1))
    late[1].options.CopyFrom(pb.EvaluateOptions(target_false_accept=0.1))
    err = rpc_error(client.evaluate, iter(late))
    assert err.code() == C.INVALID_ARGUMENT and "only the first message" in (err.details() or "")
    boxed = pb.LabelledImage(image=image_input(pattern_image(1), regions=[(0, 0, 10, 10)]), product_id="p1")
    err = rpc_error(client.evaluate, iter([pb.EvaluateRequest(images=[boxed])]))
    assert err.code() == C.INVALID_ARGUMENT and "regions" in (err.details() or "")
    err = rpc_error(client.evaluate, iter([pb.EvaluateRequest(images=items[:9])]))  # 9 > 8 per message
    assert err.code() == C.RESOURCE_EXHAUSTED
    small = RunningServer(make_settings(tmp_path / "small", max_evaluation_images=3), SHARED.engine(clip_model_dir))
    try:
        with small.client() as c:
            err = rpc_error(c.evaluate, stream(items[:4], per=4))  # 4 > 3 per call: refused before any embedding
    finally:
        small.stop()
    assert err.code() == C.RESOURCE_EXHAUSTED and "more than 3 photos" in (err.details() or "")
    err = rpc_error(client.evaluate, stream(items[:2], target_false_accept=1.5))
    assert err.code() == C.INVALID_ARGUMENT and "target_false_accept" in (err.details() or "")


def test_empty_stream_limit_and_scope(server: RunningServer, client: SkulensClient) -> None:
    resp = client.evaluate(iter([]))
    assert resp.report.queries == 0 and any("no in-catalog" in n for n in resp.report.notes)
    assert client.server_info().limits.max_evaluation_images == 40
    with server.client(token=WRITER) as writer:
        err = rpc_error(writer.evaluate, stream(labelled_set()[:2]))
    assert err.code() == C.PERMISSION_DENIED
