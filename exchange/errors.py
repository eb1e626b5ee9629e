"""One error type for the whole exchange, and its translation into gRPC status at the RPC boundary.

Handlers raise `ExchangeError(status, message)`; the message is public and names the problem.
Anything else that escapes a handler becomes INTERNAL with a generic message; the detail goes
only to the server log (DESIGN.md, "Status codes").
"""

from __future__ import annotations

import logging
from types import TracebackType

import grpc
import grpc.aio

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"


class ExchangeError(Exception):
    """A refusal or failure with the gRPC status the caller will see and a public message."""

    # Trailing metadata sent with the status (e.g. retry information for RESOURCE_EXHAUSTED).
    metadata: tuple[tuple[str, str | bytes], ...] = ()

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ExchangeError({self.status.name}, {self.message!r})"


def invalid_argument(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def unauthenticated(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.UNAUTHENTICATED, message)


def permission_denied(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.PERMISSION_DENIED, message)


def not_found(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.ALREADY_EXISTS, message)


def unavailable(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.UNAVAILABLE, message)


def deadline_exceeded(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def resource_exhausted(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def data_loss(message: str) -> ExchangeError:
    return ExchangeError(grpc.StatusCode.DATA_LOSS, message)


def as_exchange_error(exc: BaseException) -> ExchangeError:
    """The public form of any exception: itself if it is an ExchangeError, else INTERNAL."""
    if isinstance(exc, ExchangeError):
        return exc
    log.error("unexpected error", exc_info=exc)
    return ExchangeError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


class translate_errors:  # used as `async with translate_errors(context):`
    """Turn exceptions escaping an RPC handler into a gRPC status with a public message.

    A class rather than @asynccontextmanager: it wraps every call of every handler, and a
    plain object is a third of the cost of a generator-based manager.
    """

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # None: never swallows the exception (and type checkers know it)
        if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
            return  # success, an abort already under way, or cancellation
        # The boundary: everything unexpected becomes INTERNAL.
        error = as_exchange_error(exc)
        await self._context.abort(error.status, error.message, error.metadata)
