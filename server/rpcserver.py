"""The coordinator's gRPC endpoint: an asynchronous server (grpc.aio) on an event loop of its
own thread, beside the round loop on the main thread.

Why asynchronous: a synchronous gRPC server runs each call on a pool thread until it returns,
and a client's long poll for its next task holds one for up to a minute, so the coordinator
needed a thread per connected client (1,017 threads for 1,000 clients). Here an open call is
a coroutine; the blocking work runs on the fixed pools of :class:`.Workers`. The protocol is
unchanged: clients cannot tell the servers apart.

The health service (``grpc.health.v1``) is served on the same port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedlora.proto.v1 import fedlora_pb2_grpc as pbg
from fedlora.server.calls import Calls
from fedlora.server.engine import Engine
from fedlora.server.metrics import Metrics
from fedlora.server.service import Board, CoordinatorService, Workers

T = TypeVar("T")

SERVICE_NAME = "fedlora.v1.Coordinator"


class RpcServer:
    """Built, bound, started and stopped from any thread; everything of gRPC runs on its loop."""

    def __init__(self, engine: Engine, metrics: Metrics, idle_s: float,
                 options: list[tuple[str, Any]]) -> None:
        self._engine = engine
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rpc-loop", daemon=True)
        self._thread.start()
        self.workers = Workers()
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server = self._run(self._build(metrics, idle_s, options))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _build(self, metrics: Metrics, idle_s: float, options) -> grpc.aio.Server:
        server = grpc.aio.server(options=options)  # on this loop: it serves from it
        board = Board(asyncio.get_running_loop())
        self._engine.on_board = board.changed
        pbg.add_CoordinatorServicer_to_server(
            CoordinatorService(self._engine, Calls(), metrics, self.workers, board, idle_s), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        return server

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        """Binds ``address``; the port bound (0: it could not be)."""
        async def bind() -> int:
            if credentials is None:
                return self._server.add_insecure_port(address)
            return self._server.add_secure_port(address, credentials)

        return self._run(bind())

    def start(self) -> None:
        self._run(self._server.start())

    def serving(self, on: bool) -> None:
        """What the health service answers, for the whole server and for the coordinator."""
        status = health_pb2.HealthCheckResponse.SERVING if on else health_pb2.HealthCheckResponse.NOT_SERVING

        async def mark() -> None:
            for name in ("", SERVICE_NAME):
                await self._health.set(name, status)

        self._run(mark())

    def stop(self, grace: float | None) -> None:
        """Ends the calls (after ``grace`` seconds for those under way), then the loop."""
        self._engine.on_board = lambda: None
        self._run(self._server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.workers.close()
