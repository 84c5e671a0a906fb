"""Print the requirements of pyproject.toml, core plus the named extras, one a line (for `pip install -r`).

Used by the Dockerfiles to install the dependencies in a layer of their own, before the sources are copied,
so that a code change does not re-download onnxruntime, faiss or torch.

Usage: python3 pyproject_reqs.py PYPROJECT [EXTRA...]   (Python >= 3.11: tomllib)

Self-referencing extras (``skulens[test]``) are not followed: the images only ask for cpu, gpu and export.
"""

from __future__ import annotations

import sys

import tomllib


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], "rb") as fh:
        project = tomllib.load(fh)["project"]
    reqs = list(project["dependencies"])
    for extra in argv[1:]:
        reqs += project["optional-dependencies"][extra]
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
