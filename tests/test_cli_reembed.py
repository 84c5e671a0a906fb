"""`skulens reembed --catalog postgresql://...` with real models on a real PostgreSQL catalog (tests/pg_fixture.py):
a catalog enrolled by an EfficientNet-Lite0 server is re-embedded with ViT-B/32 and a server with the new model
answers from it; a rerun resumes an interrupted run; references that cannot be embedded block the switch and are
named (the embedded catalog's `reembed` is tested in tests/test_cli.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.catalog.errors import FingerprintMismatch
from skulens.catalog.migration_state import ModelSpace
from skulens.catalog.models import NewReference
from skulens.catalog.postgres import PostgresCatalog
from skulens.catalog.reembed_migration import reembed_by_migration
from skulens.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from skulens.client import image_input
from skulens.model.manifest import load_manifest
from skulens.v1 import catalog_pb2

N_PRODUCTS = 4  # two references each


def identity(model_dir: Path) -> tuple[str, int]:
    m = load_manifest(model_dir)
    return m.fingerprint, m.embedding_dim


def server_on(url: str, model_dir: Path, tmp_path: Path) -> RunningServer:
    # nearest-neighbour answers: every enrolled photo finds its own product under either (random-weights) model
    settings = replace(make_settings(tmp_path, matching="nearest"), data_dir=None, catalog=url)
    return RunningServer(settings, SHARED.engine(model_dir))


@pytest.fixture
def shared(postgres_server: Any, effnet_model_dir: Path, tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL catalog of EfficientNet-Lite0 embeddings, enrolled through a server (stopped again)."""
    url = postgres_server.new_database()
    srv = server_on(url, effnet_model_dir, tmp_path)
    try:
        with srv.client() as c:
            for p in range(N_PRODUCTS):
                c.upsert_product(f"sku-{p}")
                c.add_references(catalog_pb2.AddReferenceImagesRequest(
                    product_id=f"sku-{p}", content=pattern_image(p, variant=v)) for v in range(2))
    finally:
        srv.stop()
    yield url
    postgres_server.drop_database(url)


def embedder(model_dir: Path) -> Any:
    """embed_images of the process's shared engine of `model_dir` (as the CLI's, without loading it again)."""
    engine, loop = SHARED.engine(model_dir), SHARED.loop_thread()
    return lambda images, regions=None: loop.run(engine.embed_images(images))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_reembed_a_shared_catalog_then_serve_the_new_model(
    shared: str, effnet_model_dir: Path, clip_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_fp, _ = identity(effnet_model_dir)
    new_fp, new_dim = identity(clip_model_dir)
    code, out, err = run(capsys, "reembed", "--model", str(clip_model_dir), "--catalog", shared, "--batch", "3",
                         "--no-progress")
    assert code == EXIT_OK, err
    assert out.startswith(f"re-embedded {2 * N_PRODUCTS} references (0 resumed) from {old_fp} to {new_fp} in ")
    assert out.rstrip().endswith("; dropped 0")
    with PostgresCatalog.open(shared, fingerprint=new_fp, dim=new_dim) as cat:
        state = cat.migration_state()
        assert (state.phase, cat.stats().references) == ("none", 2 * N_PRODUCTS)  # the old space is gone
    with pytest.raises(FingerprintMismatch):
        PostgresCatalog.open(shared, fingerprint=old_fp, dim=1280)
    srv = server_on(shared, clip_model_dir, tmp_path)
    try:
        with srv.client() as c:
            resp = c.recognize([image_input(pattern_image(p), id=str(p)) for p in range(N_PRODUCTS)])
            assert resp.model_fingerprint == new_fp
            got = [(r.recognition.matches[0].product_id, round(r.recognition.best_score, 4)) for r in resp.results]
            assert got == [(f"sku-{p}", 1.0) for p in range(N_PRODUCTS)]  # the enrolled photo, in the new space
    finally:
        srv.stop()


def test_a_rerun_resumes_an_interrupted_reembed(
    shared: str, effnet_model_dir: Path, clip_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_fp, old_dim = identity(effnet_model_dir)
    new_fp, new_dim = identity(clip_model_dir)
    calls: list[int] = []
    embed = embedder(clip_model_dir)

    def dies_at_second_batch(images: list[bytes], regions: Any = None) -> list[Any]:
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return embed(images)

    with PostgresCatalog.open(shared, fingerprint=old_fp, dim=old_dim) as cat:
        with pytest.raises(RuntimeError, match="killed"):
            reembed_by_migration(cat, ModelSpace(new_fp, new_dim, str(clip_model_dir)), dies_at_second_batch,
                                 batch_size=3)
        state = cat.migration_state()
        assert (state.phase, state.serving.fingerprint) == ("candidate", old_fp)
        assert cat.space_progress(new_fp).embedded == 3
    code, out, err = run(capsys, "reembed", "--model", str(clip_model_dir), "--catalog", shared, "--batch", "3")
    assert code == EXIT_OK, err
    assert out.startswith(f"re-embedded {2 * N_PRODUCTS} references (3 resumed) from {old_fp} to {new_fp}")
    assert "re-embedding: 100%" in err and f"{2 * N_PRODUCTS}/{2 * N_PRODUCTS}" in err  # the progress bar
    with PostgresCatalog.open(shared, fingerprint=new_fp, dim=new_dim) as cat:
        assert cat.migration_state().phase == "none" and cat.space_progress(new_fp).embedded == 2 * N_PRODUCTS


def test_a_reference_without_its_image_blocks_the_switch(
    shared: str, effnet_model_dir: Path, clip_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_fp, old_dim = identity(effnet_model_dir)
    new_fp, new_dim = identity(clip_model_dir)
    with PostgresCatalog.open(shared, fingerprint=old_fp, dim=old_dim) as cat:
        cat.upsert_product("lonely")
        vec = np.ones(old_dim, dtype=np.float32) / np.sqrt(old_dim)
        (lonely,) = cat.add_references("lonely", [NewReference(vec)])  # enrolled without its image
    argv = ["reembed", "--model", str(clip_model_dir), "--catalog", shared, "--no-progress"]
    code, out, err = run(capsys, *argv)
    assert code == EXIT_FAIL and out == ""
    assert f"  cannot re-embed reference {lonely.reference_id} of lonely: no stored image\n" in err
    assert (f"skulens: error: cannot switch to model '{new_fp}': it lacks embeddings of 1 of {2 * N_PRODUCTS + 1} "
            "live references (1 have no stored image)") in err
    assert f"nothing was switched; the catalog still serves '{old_fp}'" in err
    with PostgresCatalog.open(shared, fingerprint=old_fp, dim=old_dim) as cat:
        assert cat.migration_state().phase == "candidate"
        assert cat.space_progress(new_fp).embedded == 2 * N_PRODUCTS
        cat.delete_reference(lonely.reference_id)
        # the rerun (as the CLI's, in this process) only switches: everything else was back-filled
        report = reembed_by_migration(cat, ModelSpace(new_fp, new_dim, str(clip_model_dir)), embedder(clip_model_dir))
        assert (report.reembedded, report.resumed) == (2 * N_PRODUCTS, 2 * N_PRODUCTS)
        assert cat.migration_state().serving.fingerprint == new_fp
    with pytest.raises(SystemExit) as exit_:  # one catalog: --data or --catalog
        main([*argv, "--data", str(tmp_path)])
    assert exit_.value.code == EXIT_USAGE and "not allowed with argument" in capsys.readouterr().err
