"""Request identity (``X-Request-ID``, ``traceparent``) in responses, error bodies and every log line."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.logging_config import JsonFormatter, RequestContextFilter, TextFormatter
from serving.request_id import _current, identify
from serving.settings import Settings
from tests.serving.conftest import assert_error, files, image_bytes, running
from tests.serving.processes import Server, start_server

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("order-42/attempt:1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("line\nbreak", False),
        ("", False),
    ],
    ids=["kept", "longest", "too-long", "space", "newline", "empty"],
)
def test_request_id_is_kept_when_well_formed_else_made(sent: str, kept: bool) -> None:
    rid = identify(sent, None, None).request_id
    assert rid == sent if kept else HEX32.fullmatch(rid), rid


@pytest.mark.parametrize(
    ("sent", "valid"),
    [
        (TRACEPARENT, True),
        (TRACEPARENT.upper(), True),  # normalised to lower case
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),  # version ff
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),  # zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),  # zero parent id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", False),
        ("garbage", False),
    ],
)
def test_traceparent_is_passed_through_only_when_valid(sent: str, valid: bool) -> None:
    identity = identify(None, sent, "vendor=abc")
    assert identity.traceparent == (TRACEPARENT if valid else None)
    assert identity.tracestate == ("vendor=abc" if valid else None)  # never without its traceparent


def test_responses_echo_the_identity(client: TestClient) -> None:
    made = client.get("/health/live")
    assert HEX32.fullmatch(made.headers["x-request-id"]) and "traceparent" not in made.headers
    r = client.get(
        "/info", headers={"X-Request-ID": "abc-1", "traceparent": TRACEPARENT, "tracestate": "k=v"}
    )
    assert r.headers["x-request-id"] == "abc-1"
    assert (r.headers["traceparent"], r.headers["tracestate"]) == (TRACEPARENT, "k=v")
    assert client.get("/info").headers["x-request-id"] != client.get("/info").headers["x-request-id"]


def test_error_bodies_carry_the_request_id(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    r = client.get("/support-sets/nope", headers={"X-Request-ID": "trace-me"})
    assert assert_error(r, 404, "support_set_not_found")["request_id"] == "trace-me"
    assert assert_error(client.get("/no-such-endpoint"), 404, "not_found")["request_id"]
    assert assert_error(client.post("/classify"), 422, "validation_error")["request_id"]
    with TestClient(create_app(make_settings(max_upload_bytes=1024))) as small:  # 413 before the body is read
        big = small.post("/classify", files=files("images", b"\0" * 4096), headers={"X-Request-ID": "big-1"})
        assert assert_error(big, 413, "request_too_large")["request_id"] == "big-1"


@pytest.mark.anyio
async def test_a_500_carries_the_request_id_too(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(make_settings(warmup=False))
    async with running(app, raise_errors=False) as client:

        def broken(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            raise RuntimeError("device lost")

        monkeypatch.setattr(app.state.service.batcher, "_run", broken)
        r = await client.post(
            "/classify", files=files("images", image_bytes()), headers={"X-Request-ID": "crash-7"}
        )
    assert r.status_code == 500 and r.headers["x-request-id"] == "crash-7"
    assert r.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error; the server log has the details",
        "request_id": "crash-7",
    }


def _record(message: str, name: str = "serving.test", args: tuple[object, ...] = ()) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    RequestContextFilter().filter(record)
    return record


def test_formatters_put_the_identity_in_each_line() -> None:
    token = _current.set(identify("rid-9", TRACEPARENT, None))
    try:
        line = json.loads(JsonFormatter().format(_record("hello %s", args=("you",))))
        text = TextFormatter().format(_record("hello"))
        access = json.loads(
            JsonFormatter().format(
                _record(
                    '%s - "%s %s HTTP/%s" %d', "uvicorn.access", ("1.2.3.4:5", "GET", "/info", "1.1", 200)
                )
            )
        )
    finally:
        _current.reset(token)
    assert (
        line["message"] == "hello you"
        and line["request_id"] == "rid-9"
        and line["traceparent"] == TRACEPARENT
    )
    assert set(line) == {"time", "level", "logger", "message", "request_id", "traceparent"}
    assert text.endswith(f"INFO serving.test [rid-9 {TRACEPARENT}] hello")
    assert (access["method"], access["path"], access["status"], access["request_id"]) == (
        "GET",
        "/info",
        200,
        "rid-9",
    )
    outside = json.loads(JsonFormatter().format(_record("idle")))
    assert outside["request_id"] is None and "[- -]" in TextFormatter().format(_record("idle"))
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


def _lines_of(server: Server) -> list[dict[str, object]]:
    """Every line the server wrote, each parsed as JSON (a line that is not JSON fails the test)."""
    lines = [line for line in server.output().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{server.output()}")
    return parsed


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python -m serving", "uvicorn --factory"])
def test_json_logs_of_a_real_server(how: str, model_dir: Path, tmp_path: Path) -> None:
    server = start_server(how, model_dir, db_path=tmp_path / "s.db", log_format="json")
    with server, httpx.Client(timeout=30) as http:
        server.wait_ready()
        headers = {"X-Request-ID": "create-1", "traceparent": TRACEPARENT}
        r = http.post(
            f"{server.url}/support-sets",
            files=files("support", image_bytes("red")),
            data={"name": "n", "support_labels": ["r"]},
            headers=headers,
        )
        assert r.status_code == 201 and r.headers["x-request-id"] == "create-1", r.text
        assert http.get(f"{server.url}/support-sets/nope").status_code == 404
        server.signal(signal.SIGTERM)
        server.wait(30)
        lines = _lines_of(server)
    assert {"time", "level", "logger", "message", "request_id", "traceparent"} <= set(lines[0])
    mine = [line for line in lines if line["request_id"] == "create-1"]
    assert {line["logger"] for line in mine} == {"serving.routes.support_sets", "uvicorn.access"}, mine
    assert all(line["traceparent"] == TRACEPARENT for line in mine)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    requests = [(line["method"], line["path"], line["status"]) for line in access]
    assert ("POST", "/support-sets", 201) in requests and ("GET", "/support-sets/nope", 404) in requests
    assert all(HEX32.fullmatch(str(line["request_id"])) for line in access if line["path"] != "/support-sets")
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # uvicorn's own lines: same format


@pytest.mark.slow
def test_text_logs_of_a_real_server(model_dir: Path, tmp_path: Path) -> None:
    server = start_server("python -m serving", model_dir, db_path=tmp_path / "s.db")
    with server, httpx.Client(timeout=30) as http:
        server.wait_ready()
        http.get(f"{server.url}/info", headers={"X-Request-ID": "text-1", "traceparent": TRACEPARENT})
        server.signal(signal.SIGTERM)
        server.wait(30)
        output = server.output()
    assert re.search(rf'INFO uvicorn.access \[text-1 {TRACEPARENT}\] .*"GET /info HTTP/1.1" 200', output), (
        output
    )
    assert re.search(r"INFO serving.service \[- -\] model ", output), output
