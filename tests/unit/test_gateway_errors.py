"""An unexpected error in a gateway handler: a JSON 500 that carries the request's id, the
same id as the log line with the traceback (the middleware alone, on a bare ASGI app)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from ledrec.stream.gateway import _Measured, _RequestIds


async def _broken(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("a bug")


def test_a_500_carries_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=_RequestIds(_Measured(_broken)))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await http.get("/v1/models", headers={"X-Request-Id": "bug-1"})

    with caplog.at_level(logging.ERROR, logger="ledrec.stream.gateway"):
        answer = asyncio.run(ask())
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "bug-1"
    assert answer.json() == {"error": {"code": "internal", "message": "internal error (bug-1)"}}
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
    assert logged.request_id == "bug-1" and logged.exc_info is not None  # type: ignore[attr-defined]
