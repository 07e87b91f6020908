"""Serving errors: each maps to one gRPC status and carries a message a caller can act on."""

from __future__ import annotations


class ServingError(Exception):
    """Base of serving errors; ``code`` is the gRPC status name it is answered with."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))


class InvalidRequestError(ServingError):
    """The request is malformed (INVALID_ARGUMENT); the message names the field and what is wrong."""

    code = "INVALID_ARGUMENT"


class VersionMismatchError(ServingError):
    """The request pins a version the replica does not serve (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class NotReadyError(ServingError):
    """No version is loaded yet (UNAVAILABLE): the store has none, or none loads."""

    code = "UNAVAILABLE"


class UnsupportedError(ServingError):
    """The served model cannot answer this call (e.g. Recommend without an item table) (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"
