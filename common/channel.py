"""gRPC channel and server options shared by both ends."""

from __future__ import annotations

from fedlora.common.wire.protocol import RETRY_MAX_S


def grpc_options() -> list[tuple[str, int]]:
    """Chunks are at most 3 MiB, so gRPC's default 4 MiB message limit is never what bounds a
    transfer; keepalive keeps idle long-polls open through NATs and shaped links."""
    return [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]


def client_channel_options() -> list[tuple[str, int]]:
    """gRPC's own reconnect backoff grows to two minutes by default: a coordinator back after
    a minute's stall would then wait that long for its clients. Capped at the client's own retry
    cap (:mod:`fedlora.common.backoff`), so a channel is ready again when the client retries."""
    return grpc_options() + [("grpc.initial_reconnect_backoff_ms", 500),
                             ("grpc.min_reconnect_backoff_ms", 500),
                             ("grpc.max_reconnect_backoff_ms", int(RETRY_MAX_S * 1000))]
