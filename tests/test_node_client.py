"""The Node.js example client (examples/node, built from proto/ only) against a real server: server info, health
Check / List / Watch, upsert without a mask, client-streamed enrolment with a request id and its safe retry,
Recognize with min_catalog_version, a stream with a refused message, errors read the standard way (the
google.rpc.Status trailer of a failed call, and ItemStatus.details of failed items: ErrorInfo, BadRequest, the field
path and the stream position), an idempotent delete.

Runs when `node` and the example's packages are there (scripts/test installs them with npm); otherwise skipped with
the reason printed. On CI (`CI` set) a missing piece fails the test instead: CI has node and must run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    modules = EXAMPLE / "node_modules"
    if not all((modules / p).is_dir() for p in ("@grpc/grpc-js", "google-proto-files", "protobufjs")):
        return f"the example's packages are not installed (npm install --prefix {EXAMPLE})"
    return None


@pytest.fixture(scope="module")
def server(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    reason = _missing()
    if reason is not None:
        print(f"\n[test_node_client] SKIPPED: {reason}")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Node.js client: {reason}")
        pytest.skip(reason)
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("node") / "data"), SHARED.engine(clip_model_dir))
    yield srv
    srv.stop()


def test_node_client_walks_the_contract(server: RunningServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(pattern_image(42))
    res = subprocess.run(["node", str(EXAMPLE / "client.mjs"), server.addr, str(photo)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    engine = server.app.runtime.engine
    assert report["model"] == {"fingerprint": engine.fingerprint, "dim": 512, "modalities": ["image", "text"]}
    assert report["max_images_per_request"] == server.settings.max_images_per_request
    assert report["health"] == "SERVING" and report["watch_first"] == "SERVING"
    assert report["health_list"] == ["", "skulens.v1.CatalogService", "skulens.v1.MigrationService",
                                     "skulens.v1.RecognitionService"]
    assert report["upsert"]["created"] is True and report["upsert"]["category_kept"] == "drinks"
    assert report["added"]["added"] == 1 and int(report["added"]["reference_id"]) > 0
    assert int(report["added"]["version"]) > int(report["upsert"]["version"])  # uint64 as a string: exact
    assert report["recognize"]["product"] == "js-oat" and report["recognize"]["verdict"] == "VERDICT_KNOWN"
    assert int(report["recognize"]["version"]) >= int(report["added"]["version"])
    assert report["stream"] == [["0", 0, 0], ["1", 0, 3]]  # message 1 refused in the stream (INVALID_ARGUMENT)
    assert report["error"] == {
        "code": "INVALID_ARGUMENT", "field": "options.top_k", "status_code": 3,
        "details": {"reason": "BAD_REQUEST", "domain": "skulens.v1", "field": "options.top_k", "stream_index": None,
                    "violations": ["options.top_k"]},
    }
    assert report["item_errors"] == [
        {"code": "INVALID_ARGUMENT", "field": "images[1].content",
         "details": {"reason": "INVALID_IMAGE", "domain": "skulens.v1", "field": "images[1].content",
                     "stream_index": None, "violations": ["images[1].content"]}},
        {"code": "INVALID_ARGUMENT", "field": "images[2].regions[1]",
         "details": {"reason": "INVALID_REGION", "domain": "skulens.v1", "field": "images[2].regions[1]",
                     "stream_index": None, "violations": ["images[2].regions[1]"]}},
    ]
    # an enrolment message fails alone, its field relative to the message, its position beside it
    assert report["enrol_item_error"] == {
        "index": 1, "code": "INVALID_ARGUMENT", "field": "content",
        "details": {"reason": "INVALID_IMAGE", "domain": "skulens.v1", "field": "content", "stream_index": "1",
                    "violations": ["content"]},
    }
    assert report["retry"] == {"same_reference": True, "duplicate": False}  # the request id's original outcome
    assert report["delete_retry"] == {"deleted_references": 0}
