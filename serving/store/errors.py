"""The store's errors: one for start-up (the process stops), one for a request (503, retry)."""

from __future__ import annotations

from serving.errors import ServingError


class StoreError(RuntimeError):
    """The database cannot be opened, its URL is not supported, or a newer server wrote its schema."""


class StoreUnavailable(ServingError):
    """The database failed during a request (connection lost, locked too long): retry."""

    status_code = 503
    code = "store_unavailable"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the driver's error, one line
