"""Container health probe: asks a server's standard ``grpc.health.v1`` service whether it is SERVING.

Usage::

    python -m skulens.client.healthcheck [--addr 127.0.0.1:50051] [--service ""] [--timeout 3]
                                 [--tls-ca CA.pem [--tls-server-name NAME] [--tls-cert C.pem --tls-key K.pem]]

Exits 0 when the answer is SERVING and 1 otherwise (any other status, an RPC error, a timeout or an
unreachable address), printing one line that says which. Meant for a Dockerfile ``HEALTHCHECK`` and compose
``healthcheck:``, so it imports nothing heavier than ``grpcio`` and ``grpcio-health-checking``: no torch, no
ONNX Runtime, no FAISS, no skulens settings. Health needs no bearer token (the server exempts it).

Every option also reads an environment variable, so a container's fixed ``HEALTHCHECK`` command follows its
configuration: the address defaults to ``127.0.0.1:$SKULENS_PORT`` (port 50051 when unset); a server started
with TLS (``SKULENS_TLS_CERT``) needs ``SKULENS_HEALTHCHECK_TLS_CA`` (the CA that signed its certificate) and,
when the certificate does not name 127.0.0.1, ``SKULENS_HEALTHCHECK_TLS_SERVER_NAME``; with mutual TLS also
``SKULENS_HEALTHCHECK_TLS_CERT`` / ``SKULENS_HEALTHCHECK_TLS_KEY`` (a client certificate).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 50051
EXIT_SERVING = 0
EXIT_UNHEALTHY = 1
ENV_PREFIX = "SKULENS_HEALTHCHECK_"


def default_addr(environ: Mapping[str, str] | None = None) -> str:
    """``127.0.0.1:$SKULENS_PORT``, or port 50051 when the variable is unset or empty."""
    env = os.environ if environ is None else environ
    port = env.get("SKULENS_PORT") or str(DEFAULT_PORT)
    return f"127.0.0.1:{port}"


def tls_credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """Credentials trusting ``ca``, with the client pair ``cert``/``key`` for mutual TLS when given."""
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None,
    )


def check(
    addr: str,
    service: str = "",
    timeout: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> tuple[bool, str]:
    """Ask ``addr`` for the health of ``service`` ("" = the whole server).

    Plaintext unless ``credentials`` are given; ``server_name`` overrides the name checked in the server's
    certificate. Returns ``(serving, detail)``: ``serving`` is True only for a SERVING answer within
    ``timeout`` seconds; ``detail`` is the status name or the gRPC error that came back instead.
    """
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if credentials is None:
        channel = grpc.insecure_channel(addr, options=options)
    else:
        channel = grpc.secure_channel(addr, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call):
                return False, f"{exc.code().name}: {exc.details()}"
            return False, f"UNKNOWN: {exc}"
    status_name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status_name


def _path_or_none(text: str | None) -> Path | None:
    return Path(text) if text else None


def _parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m skulens.client.healthcheck",
        description="Exit 0 when the gRPC server at ADDR reports SERVING through grpc.health.v1, else 1.",
    )
    parser.add_argument(
        "--addr",
        default=env.get(f"{ENV_PREFIX}ADDR") or default_addr(env),
        help=f"host:port [env {ENV_PREFIX}ADDR; default 127.0.0.1:$SKULENS_PORT, or :{DEFAULT_PORT}]",
    )
    parser.add_argument(
        "--service",
        default=env.get(f"{ENV_PREFIX}SERVICE", ""),
        help=f'service name to check [env {ENV_PREFIX}SERVICE; default "": the whole server]',
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for an answer (default 3)"
    )
    tls = parser.add_argument_group("TLS (plaintext unless --tls-ca is given)")
    for name, text in (
        ("ca", "PEM CA bundle that signed the server certificate; enables TLS"),
        ("cert", "PEM client certificate, for a server that requires one (mutual TLS)"),
        ("key", "PEM private key of --tls-cert"),
    ):
        tls.add_argument(
            f"--tls-{name}",
            type=Path,
            default=_path_or_none(env.get(f"{ENV_PREFIX}TLS_{name.upper()}")),
            help=f"{text} [env {ENV_PREFIX}TLS_{name.upper()}]",
        )
    tls.add_argument(
        "--tls-server-name",
        default=env.get(f"{ENV_PREFIX}TLS_SERVER_NAME") or None,
        help=f"name to expect in the server certificate [env {ENV_PREFIX}TLS_SERVER_NAME]",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the probe; return the process exit code (0 SERVING, 1 anything else)."""
    env = os.environ if environ is None else environ
    args = _parse_args(argv, env)
    if args.timeout <= 0:
        print(f"unhealthy: --timeout must be > 0, got {args.timeout}", file=sys.stderr)
        return EXIT_UNHEALTHY
    credentials = None
    if args.tls_ca is not None:
        try:
            credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        except (OSError, ValueError) as exc:
            print(f"unhealthy: TLS settings: {exc}", file=sys.stderr)
            return EXIT_UNHEALTHY
    serving, detail = check(args.addr, args.service, args.timeout, credentials, args.tls_server_name)
    if serving:
        print(f"{args.addr}: {detail}")
        return EXIT_SERVING
    hint = ""
    if credentials is None and env.get("SKULENS_TLS_CERT"):
        hint = f" (the server has SKULENS_TLS_CERT: set {ENV_PREFIX}TLS_CA for the probe)"
    print(f"{args.addr}: unhealthy: {detail}{hint}", file=sys.stderr)
    return EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
