"""Crash consistency: a child process enrolling references is SIGKILLed at random points (seeded rounds).

After each kill the catalog is reopened: every acknowledged reference is there with its exact embedding and
its product, acknowledged deletes are gone, nothing is half-written, and the index agrees with the store.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from skulens.catalog import Catalog, CatalogSettings

DIM = 24
FP = "crash-model/24:0000"
REPO = Path(__file__).resolve().parents[1]

CHILD = f"""
import hashlib, os, sys
from pathlib import Path
import numpy as np
from skulens.catalog import Catalog, CatalogSettings, NewReference

path, seed = Path(sys.argv[1]), int(sys.argv[2])
cat = Catalog.open(path, fingerprint={FP!r}, dim={DIM}, settings=CatalogSettings())  # synchronous=FULL
rng = np.random.default_rng(seed)
mine = []
print("ready", flush=True)
while True:
    pid = f"p{{int(rng.integers(0, 40))}}"
    cat.upsert_product(pid, f"Product {{pid}}", "c" + pid[-1], {{"seed": str(seed)}})
    refs = []
    for _ in range(int(rng.integers(1, 6))):
        v = rng.standard_normal({DIM}).astype(np.float32)
        v /= np.linalg.norm(v)
        image = rng.bytes(int(rng.integers(1_000, 200_000))) if rng.random() < 0.7 else None
        refs.append(NewReference(v, source="crash", image=image))
    added = cat.add_references(pid, refs)
    for a, r in zip(added, refs):
        digest = hashlib.sha256(r.embedding.astype("<f4").tobytes()).hexdigest()[:16]
        print("ack", a.reference_id, pid, digest, flush=True)
        mine.append(a.reference_id)
    if mine and rng.random() < 0.2:
        rid = mine.pop(int(rng.integers(0, len(mine))))
        print("deleting", rid, flush=True)
        cat.delete_reference(rid)
        print("del", rid, flush=True)
"""


def _run_and_kill(script: Path, path: Path, seed: int, delay: float) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith("\n"):  # a line cut by the kill was never acknowledged
                lines.append(line.rstrip("\n"))
            if line.startswith("ready"):
                ready.set()

    reader = threading.Thread(target=pump)
    reader.start()
    if not ready.wait(60):
        proc.kill()
        reader.join()
        raise AssertionError(f"child did not start: {proc.stderr.read() if proc.stderr else ''}")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return lines


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / "catalog"
    rng = np.random.default_rng(1234)
    acked: dict[int, tuple[str, str]] = {}
    deleted: set[int] = set()
    total_acks = 0
    for round_ in range(5):
        lines = _run_and_kill(script, path, seed=round_, delay=float(rng.uniform(0.05, 0.8)))
        print(f"round {round_}: {sum(x.startswith('ack') for x in lines)} acks before SIGKILL")
        in_flight_delete: set[int] = set()
        for line in lines:
            kind, *rest = line.split()
            if kind == "ack":
                acked[int(rest[0])] = (rest[1], rest[2])
                total_acks += 1
            elif kind == "deleting":
                in_flight_delete.add(int(rest[0]))
            elif kind == "del":
                deleted.add(int(rest[0]))
                in_flight_delete.discard(int(rest[0]))

        db = sqlite3.connect(path / "catalog.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {int(r[0]): (r[1], bytes(r[2]), r[3]) for r in db.execute(
            "SELECT r.reference_id, p.product_id, r.embedding, r.fingerprint FROM refs r "
            "JOIN products p ON p.pk = r.product_pk")}
        orphans = db.execute("SELECT COUNT(*) FROM refs WHERE product_pk NOT IN (SELECT pk FROM products)")
        assert orphans.fetchone()[0] == 0
        lengths = {int(n) for (n,) in db.execute("SELECT DISTINCT length(embedding) FROM refs")}
        db.close()
        assert lengths <= {DIM * 4}
        for rid, (pid, digest) in acked.items():
            if rid in deleted:
                assert rid not in rows, f"round {round_}: acknowledged delete of {rid} lost"
                continue
            if rid in in_flight_delete:
                continue  # killed during its delete: either state is fine
            assert rid in rows, f"round {round_}: acknowledged reference {rid} lost"
            product_id, blob, fingerprint = rows[rid]
            assert product_id == pid and fingerprint == FP
            assert hashlib.sha256(blob).hexdigest()[:16] == digest
        deleted |= {rid for rid in in_flight_delete if rid not in rows}

        cat = Catalog.open(path, fingerprint=FP, dim=DIM, settings=CatalogSettings())
        st = cat.stats()
        assert st.references == len(rows) == st.index_size - st.index_tombstones
        if round_ > 0 and any(line.startswith("ack") for line in lines):
            # the snapshot from the previous round was stamped before this child wrote more: rebuilt
            assert not st.snapshot.loaded
        ids, _, vecs = cat.sample_references()
        _, got, _ = cat.nearest_references(vecs, 1)
        assert (got[:, 0] == ids).all()  # the index agrees with the store
        cat.close()  # writes a snapshot; the next child loads it, then makes it stale
    assert total_acks > 20  # the kills really landed mid-stream
