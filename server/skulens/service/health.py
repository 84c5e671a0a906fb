"""`grpc.health.v1` as the standard says: Check, Watch and List (grpcio's servicer leaves List unimplemented).

Watch streams the service's status on every change until the client goes away; the call log wraps it like any
other stream (it writes its own responses), so clients that come and go never hurt the server.
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

ServingStatus = int  # health_pb2.HealthCheckResponse.ServingStatus values (a protobuf enum: ints)


class HealthServicer(health.aio.HealthServicer):
    """grpcio's asyncio health servicer plus `List`: every service's status, in one snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, ServingStatus] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._shut_down = False

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set a service's status (watchers are told); ignored after `enter_graceful_shutdown`, as in grpcio."""
        await super().set(service, status)
        if not self._shut_down:
            self._statuses[service] = status

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on (grpcio's behaviour), List included."""
        await super().enter_graceful_shutdown()
        self._shut_down = True
        for service in self._statuses:
            self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING

    async def List(self, request: health_pb2.HealthListRequest, context: object) -> health_pb2.HealthListResponse:
        """A snapshot of every known service's status (the standard's List)."""
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in self._statuses.items()}
        )
