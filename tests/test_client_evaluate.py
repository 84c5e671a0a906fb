"""skulens.client.evaluate: labelled sets from folders (any depth, `_unknown`, groups) and CSVs, checked before
any call; the text and JSON forms of a report (unmeasurable figures shown as n/a)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skulens.client.evaluate import (
    LabelledPhoto,
    format_report,
    labelled_from_csv,
    labelled_from_folder,
    load_labelled,
    report_json,
)
from skulens.v1 import common_pb2, recognition_pb2

pb = recognition_pb2


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_any_depth_unknown_and_groups(tmp_path: Path) -> None:
    a = touch(tmp_path / "Fruit" / "Apple" / "Golden" / "1.jpg")
    b = touch(tmp_path / "Fruit" / "Pear" / "2.PNG")
    c = touch(tmp_path / "Packages" / "milk-1l" / "3.jpg")
    u = touch(tmp_path / "_unknown" / "4.jpg")
    touch(tmp_path / "Fruit" / "Pear" / "notes.txt")
    touch(tmp_path / ".hidden" / "sku" / "5.jpg")
    got = labelled_from_folder(tmp_path)
    assert got == [
        LabelledPhoto(a, "Golden"),
        LabelledPhoto(b, "Pear"),
        LabelledPhoto(c, "milk-1l"),
        LabelledPhoto(u, ""),
    ]
    by_folder = load_labelled(tmp_path, group_by="folder")
    assert [p.group for p in by_folder] == ["Fruit", "Fruit", "Packages", ""]  # _unknown directly under the root
    assert [p.product_id for p in labelled_from_folder(tmp_path, unknown="Pear")][1] == ""


def test_folder_errors(tmp_path: Path) -> None:
    touch(tmp_path / "loose.jpg")
    with pytest.raises(ValueError, match="holds image files itself"):
        labelled_from_folder(tmp_path)
    with pytest.raises(ValueError, match="no image files"):
        labelled_from_folder(_empty(tmp_path))
    with pytest.raises(ValueError, match="group_by"):
        labelled_from_folder(tmp_path, group_by="colour")
    with pytest.raises(FileNotFoundError):
        load_labelled(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    (d / "sub").mkdir(parents=True)
    return d


def test_csv(tmp_path: Path) -> None:
    a = touch(tmp_path / "imgs" / "a.jpg")
    b = touch(tmp_path / "imgs" / "b.jpg")
    listing = tmp_path / "set.csv"
    listing.write_text(f"path,product_id,group\nimgs/a.jpg,sku-1,dairy\n# a comment\n{b},_unknown\n\nimgs/a.jpg,\n")
    assert load_labelled(listing) == [
        LabelledPhoto(a, "sku-1", "dairy"),
        LabelledPhoto(b, ""),
        LabelledPhoto(a, ""),
    ]
    listing.write_text("imgs/a.jpg,sku-1\nimgs/nope.jpg,sku-2\n")
    with pytest.raises(ValueError, match=r"not found: .*nope\.jpg"):
        labelled_from_csv(listing)
    listing.write_text("just-a-path\n")
    with pytest.raises(ValueError, match="expected path,product_id"):
        labelled_from_csv(listing)


def _response(*, with_outside: bool) -> pb.EvaluateResponse:
    r = pb.EvaluationReport(
        queries=4,
        in_catalog=3,
        out_of_catalog=1 if with_outside else 0,
        failed=1,
        overall=pb.TopKAccuracy(queries=3, top1=2 / 3, top5=1.0),
        groups=[pb.GroupAccuracy(group="dairy", accuracy=pb.TopKAccuracy(queries=3, top1=2 / 3, top5=1.0))],
        verdicts=[pb.VerdictCounts(verdict=common_pb2.VERDICT_KNOWN, right=2, wrong=1, out_of_catalog=1)],
        curve=[pb.CurvePoint(threshold=0.9, coverage=0.25, accuracy=1.0, false_reject=2 / 3)],
        confused_pairs=[pb.ConfusedPair(product_id="a", taken_for="b", count=1)],
        thresholds=pb.MatchThresholds(unknown_threshold=0.7, ambiguity_margin=0.02),
        operating_point=pb.OperatingPoint(target_false_accept=0.05, coverage=0.25),
        notes=["something it could not measure"],
        failures=[pb.QueryOutcome(id="bad.jpg", status=common_pb2.ItemStatus(code=3, message="not an image"))],
    )
    if with_outside:
        r.auroc = 0.75
        r.accepted_correct_at_target = 0.5
        r.operating_point.unknown_threshold = 0.8125
        r.operating_point.false_accept = 0.0
    return pb.EvaluateResponse(report=r, catalog_version=7)


def test_format_report() -> None:
    text = format_report(_response(with_outside=True))
    assert "Evaluation: 4 photos (3 of catalog products, 1 of products not in the catalog; 1 failed)" in text
    assert "top-1 66.7 %  top-5 100.0 %" in text and "dairy" in text
    assert "AUROC, catalog products against the others (best score): 0.750" in text
    assert "at 5.0 % false accepts: unknown_threshold 0.8125, accepted and correct 50.0 %" in text
    assert "a → b: 1" in text and "note: something it could not measure" in text and "failed: bad.jpg" in text
    plain = format_report(_response(with_outside=False))
    assert "AUROC, catalog products against the others (best score): n/a" in plain
    assert "not measurable (no photo of a product outside the catalog)" in plain
    assert "false accept n/a" in plain


def test_report_json_keeps_unset_shares_out() -> None:
    d = report_json(_response(with_outside=False))
    assert "auroc" not in d["report"] and d["report"]["overall"]["top5"] == 1.0
    assert (
        d["report"]["curve"][0]["false_reject"] == pytest.approx(2 / 3)
        and "false_accept" not in d["report"]["curve"][0]
    )
    assert report_json(_response(with_outside=True))["report"]["auroc"] == 0.75
