"""Container health probe: asks a server's standard ``grpc.health.v1`` service whether it is SERVING.

Usage::

    python -m server.healthcheck [--addr 127.0.0.1:50051] [--service ""] [--timeout 3]

Exits 0 when the answer is SERVING and 1 otherwise (any other status, an RPC error, a timeout or an
unreachable address), printing one line that says which. Meant for a Dockerfile ``HEALTHCHECK`` and compose
``healthcheck:``, so it imports nothing heavier than ``grpcio`` and ``grpcio-health-checking``: no torch, no
ONNX Runtime, no FAISS, no skulens settings. The address defaults to ``127.0.0.1:$SKULENS_PORT`` (50051 when
unset), so the same command works whatever port the container serves on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 50051
EXIT_SERVING = 0
EXIT_UNHEALTHY = 1


def default_addr() -> str:
    """``127.0.0.1:$SKULENS_PORT``, or port 50051 when the variable is unset or empty."""
    port = os.environ.get("SKULENS_PORT") or str(DEFAULT_PORT)
    return f"127.0.0.1:{port}"


def check(addr: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """Ask ``addr`` for the health of ``service`` ("" = the whole server).

    Returns ``(serving, detail)``: ``serving`` is True only for a SERVING answer within ``timeout`` seconds;
    ``detail`` is the status name or the gRPC error that came back instead.
    """
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            name = code.name if code is not None else "UNKNOWN"
            text = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return False, f"{name}: {text}"
    status_name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status_name


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server.healthcheck",
        description="Exit 0 when the gRPC server at ADDR reports SERVING through grpc.health.v1, else 1.",
    )
    parser.add_argument(
        "--addr", default=default_addr(), help="host:port (default 127.0.0.1:$SKULENS_PORT, or :50051)"
    )
    parser.add_argument("--service", default="", help='service name to check (default "": the whole server)')
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for an answer (default 3)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe; return the process exit code (0 SERVING, 1 anything else)."""
    args = _parse_args(argv)
    if args.timeout <= 0:
        print(f"unhealthy: --timeout must be > 0, got {args.timeout}", file=sys.stderr)
        return EXIT_UNHEALTHY
    serving, detail = check(args.addr, args.service, args.timeout)
    if serving:
        print(f"{args.addr}: {detail}")
        return EXIT_SERVING
    print(f"{args.addr}: unhealthy: {detail}", file=sys.stderr)
    return EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
