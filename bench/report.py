"""Write one benchmark's markdown into its own section of docs/BENCHMARKS.md.

Each benchmark owns the text between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`; re-running it
replaces only that section (appended at the end the first time), so the other benchmarks' figures stay.
Headings of the section are pushed one level down (`#` → `##`) under the document's own title.
"""

from __future__ import annotations

import re
from pathlib import Path

TITLE = "# Benchmarks\n\nWritten by the scripts under `bench/`; each section says the command and the machine.\n"


def demote(markdown: str) -> str:
    """Push every markdown heading one level down."""
    return re.sub(r"^(#+) ", r"#\1 ", markdown, flags=re.MULTILINE)


def write_section(path: Path, name: str, markdown: str) -> None:
    """Replace (or append) the section `name` of `path` with `markdown`."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{demote(markdown.strip())}\n{end}"
    doc = path.read_text() if path.exists() else TITLE
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
