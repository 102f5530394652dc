"""gRPC channel and server options shared by both ends."""

from __future__ import annotations


def grpc_options() -> list[tuple[str, int]]:
    """Chunks are at most 3 MiB, so gRPC's default 4 MiB message limit is never what bounds a
    transfer; keepalive keeps idle long-polls open through NATs and shaped links."""
    return [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]
