"""Error responses in the 26.07 server's shape: the real status and
``{"error": msg, "message": msg, "code": code, ...extra}``."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """Raise anywhere in the emulator; the app turns it into the server's error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> JSONResponse:
        return api_error(self.status, self.code, self.message, headers=self.headers, **self.extra)


def api_error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "message": message, "code": code}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/json; charset=utf-8")
