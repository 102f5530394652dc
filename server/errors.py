"""Refusals that map to a gRPC status on the wire and a log line on the coordinator."""

from __future__ import annotations

import grpc


class Refused(Exception):
    """Bad input from a client: refused with ``code``; nothing it sent was used."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
