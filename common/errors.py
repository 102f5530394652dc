"""Refusals of bad input, in a transport-neutral form.

Code that checks what a peer sent (the engine, the wire package, update validation) raises
:class:`Refused` with a :class:`Status`; the gRPC service maps it to the status of the same
name on the wire. Nothing below the service imports grpc for its errors.
"""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """The refusal kinds fedlora uses; names match gRPC's status codes one to one."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    DATA_LOSS = "DATA_LOSS"
    NOT_FOUND = "NOT_FOUND"


class Refused(Exception):
    """Bad input from a peer: refused with ``code``; nothing it sent was used."""

    def __init__(self, code: Status, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
