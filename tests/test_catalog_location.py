"""catalog location: `--catalog` URLs (sqlite:///DIR, a directory, postgresql://…), redaction, open_catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skulens.catalog.backend import CatalogBackend
from skulens.catalog.catalog import Catalog
from skulens.catalog.errors import InvalidArgument
from skulens.catalog.location import CatalogLocation, open_catalog, parse_location
from skulens.catalog.models import NewReference
from skulens.catalog.settings import CatalogSettings


def test_forms_of_a_location() -> None:
    assert parse_location("sqlite:///var/lib/skulens") == CatalogLocation("sqlite", path=Path("/var/lib/skulens"))
    assert parse_location("/data/cat") == CatalogLocation("sqlite", path=Path("/data/cat"))
    assert parse_location(Path("rel/dir")) == CatalogLocation("sqlite", path=Path("rel/dir"))
    url = "postgresql://skulens:s3cret@db.internal:5433/catalog?sslmode=require"
    loc = parse_location(url)
    assert (loc.kind, loc.url) == ("postgresql", url)
    assert loc.redacted() == "postgresql://skulens:***@db.internal:5433/catalog?sslmode=require"
    assert "s3cret" not in loc.redacted()
    assert parse_location("postgres://u@h/db").redacted() == "postgres://u@h/db"  # no password: as given
    assert parse_location("sqlite:///x").redacted() == "sqlite:///x"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is empty"),
        ("  ", "is empty"),
        ("sqlite://relative/dir", "three slashes"),
        ("mysql://u@h/db", "unknown scheme 'mysql'"),
        ("postgresql:///db", "names no host"),
    ],
)
def test_bad_locations_name_the_field(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says) as err:
        parse_location(text, "--catalog")
    assert err.value.field == "--catalog"


def test_open_catalog_embedded(tmp_path: Path) -> None:
    """A sqlite location opens the embedded backend, which is a CatalogBackend, and reopens with its data."""
    settings = CatalogSettings(synchronous="NORMAL", use_gpu="never")
    loc = parse_location(f"sqlite://{tmp_path / 'cat'}")
    cat = open_catalog(loc, fingerprint="m/1:x", dim=4, settings=settings)
    try:
        assert isinstance(cat, Catalog) and isinstance(cat, CatalogBackend)
        cat.upsert_product("p")
        vec = np.array([1, 0, 0, 0], dtype=np.float32)
        cat.add_references("p", [NewReference(embedding=vec, image=b"img")])
        version = cat.version()
    finally:
        cat.close()
    again = open_catalog(parse_location(tmp_path / "cat"), fingerprint="m/1:x", dim=4, settings=settings)
    try:
        assert again.version() == version and again.get_product("p").product.reference_count == 1
    finally:
        again.close()
