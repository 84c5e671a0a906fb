"""bench/report.py: each benchmark replaces only its own section of docs/BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

from bench.report import demote, write_section


def test_demote_pushes_headings_down_only() -> None:
    assert demote("# A\ntext # not a heading\n## B\n") == "## A\ntext # not a heading\n### B\n"


def test_sections_are_appended_then_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    write_section(doc, "inference", "# Inference\n\n| a |\n|---|\n| 1 |\n")
    write_section(doc, "catalog", "# Catalog\n\nfirst\n")
    write_section(doc, "inference", "# Inference\n\n| a |\n|---|\n| 2 |\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("bench:inference:begin") == 1 and "| 2 |" in text and "| 1 |" not in text
    assert text.index("## Inference") < text.index("## Catalog")  # replaced where it stood
    assert "first" in text
