"""gRPC servicer of `MigrationService` (proto/skulens/v1/migration.proto): thin shapes around `MigrationManager`."""

from __future__ import annotations

import asyncio

import grpc

from skulens.catalog.migration_state import MigrationState, ModelSpace
from skulens.service.errors_grpc import NotReady
from skulens.service.migration import MigrationManager
from skulens.service.state import Runtime
from skulens.v1 import migration_pb2 as pb
from skulens.v1 import migration_pb2_grpc


class MigrationServicer(migration_pb2_grpc.MigrationServiceServicer):
    """Starts, inspects, switches, aborts and finishes model migrations of the catalog this server serves."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def _manager(self) -> MigrationManager:
        self.rt.ready()
        if self.rt.migration is None:
            raise NotReady("model migration is not running on this server yet; retry shortly")
        return self.rt.migration

    async def _status(self, state: MigrationState, *, count: bool = True) -> pb.MigrationStatus:
        m = self._manager()
        catalog = self.rt.catalog
        assert catalog is not None
        progress = await m.refresh_progress() if count else m.progress
        version = await asyncio.to_thread(catalog.version)
        out = pb.MigrationStatus(
            phase=state.phase, shadow_share=state.shadow_share, catalog_version=version,
            started_at=state.started_at, switched_at=state.switched_at,
        )
        for name, space in (("serving", state.serving), ("candidate", state.candidate),
                            ("previous", state.previous)):
            if space is not None:
                getattr(out, name).CopyFrom(_space(space, m))
        if progress is not None:
            out.backfill.CopyFrom(pb.BackfillProgress(
                live_references=progress.live, embedded=progress.embedded, pending=progress.pending,
                unembeddable=progress.unembeddable, unembeddable_reference_ids=list(progress.unembeddable_ids),
                running_here=m.backfill_running, embedded_here=m.embedded_here, images_per_second=m.rate(),
            ))
        report = m.shadow.report(catalog.settings.unknown_threshold)
        out.shadow.CopyFrom(pb.ShadowReport(
            compared=int(report["compared"]), top1_agree=int(report["top1_agree"]),
            top1_agreement=report["top1_agreement"], shadow_errors=int(report["errors"]),
            mean_score_shift=report.get("mean_score_shift", 0.0),
            score_shift_p05=report.get("score_shift_p05", 0.0), score_shift_p50=report.get("score_shift_p50", 0.0),
            score_shift_p95=report.get("score_shift_p95", 0.0),
            suggested_unknown_threshold=report.get("suggested_unknown_threshold", 0.0),
            unknown_share=report.get("unknown_share", 0.0),
        ))
        return out

    async def StartMigration(
        self, request: pb.StartMigrationRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartMigrationResponse:
        """See migration.proto."""
        state = await self._manager().start_migration(request.model_dir, request.shadow_share)
        return pb.StartMigrationResponse(status=await self._status(state))

    async def GetMigration(
        self, request: pb.GetMigrationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMigrationResponse:
        """See migration.proto."""
        state = await self._manager().sync()
        return pb.GetMigrationResponse(status=await self._status(state))

    async def SwitchModel(
        self, request: pb.SwitchModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.SwitchModelResponse:
        """See migration.proto."""
        state = await self._manager().switch(request.fingerprint)
        return pb.SwitchModelResponse(status=await self._status(state))

    async def AbortMigration(
        self, request: pb.AbortMigrationRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortMigrationResponse:
        """See migration.proto."""
        state = await self._manager().abort()
        return pb.AbortMigrationResponse(status=await self._status(state, count=False))

    async def FinishMigration(
        self, request: pb.FinishMigrationRequest, context: grpc.aio.ServicerContext
    ) -> pb.FinishMigrationResponse:
        """See migration.proto."""
        state = await self._manager().finish()
        return pb.FinishMigrationResponse(status=await self._status(state, count=False))


def _space(space: ModelSpace, m: MigrationManager) -> pb.ModelSpace:
    return pb.ModelSpace(fingerprint=space.fingerprint, dim=space.dim, model_dir=space.model_dir,
                         loaded_here=m.engine_for(space.fingerprint) is not None)
