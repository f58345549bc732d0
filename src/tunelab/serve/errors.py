"""The API's errors: OpenAI's envelope `{"error": {"message", "type", "param", "code"}}` with its HTTP status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer the client gets instead of a result; `message` says what to change, in one line or a few."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(what: str, ident: str, param: str | None = None, code: str | None = None) -> ApiError:
    """Another key's object answers exactly as a missing one: its existence is not disclosed."""
    return ApiError(404, f"No such {what}: {ident}", param=param, code=code or f"{what.replace(' ', '_')}_not_found")


def conflict(message: str, code: str = "invalid_state") -> ApiError:
    return ApiError(409, message, code=code)
