"""`ServeProcess`: a real `skulens serve` in a subprocess (port 0), for tests that kill, restart or replicate it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from skulens.client.client import ClientConfig, SkulensClient

REPO = Path(__file__).resolve().parents[1]


class ServeProcess:
    """`skulens serve --catalog URL` in a subprocess on port 0; stderr kept in a log file."""

    def __init__(self, model: Path, catalog_url: str, log: Path, *extra: str) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115
        env = {**os.environ, "SKULENS_LOG_FORMAT": "text", "SKULENS_LOG_LEVEL": "INFO"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skulens.cli", "serve", "--model", str(model), "--catalog", catalog_url,
             "--port", "0", "--max-batch", "8", "--grace-seconds", "2", *extra],
            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        self.port = 0
        deadline = time.monotonic() + 120
        for line in self.proc.stderr:
            self._log.write(line)
            m = re.search(r"gRPC listening on 127\.0\.0\.1:(\d+)", line)
            self.port = int(m.group(1)) if m else self.port
            if 'msg="serving' in line or time.monotonic() > deadline:
                break
        if not self.port or self.proc.poll() is not None:
            self._log.flush()
            raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)

    def client(self, timeout: float = 30) -> SkulensClient:
        return SkulensClient(ClientConfig(addr=f"127.0.0.1:{self.port}", timeout=timeout))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        # The server's decode worker processes share its stderr and leave within a second of it (a killed
        # server's too): read to the end before closing the log.
        self._drainer.join(timeout=10)
        self._log.close()
