"""The load client of benchmarks/serving_load.py: HTTP/1.1 keep-alive over asyncio streams, pre-encoded.

It shares the machine with the server it measures, so it must cost little and the same at every
concurrency: each worker owns one keep-alive connection and writes request bytes encoded once
(multipart body and headers), then reads the status line, the headers and a ``Content-Length`` (or
chunked) body. (httpx's connection pool, the first client here, cost 1.9 ms of CPU per request at
concurrency 8 and 7.3 ms at 64 on this machine, load average 11-18: at 64 the client took the CPU the server
needed, and the server saw fewer requests at once.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field


def multipart_request(host: str, path: str, field_name: str, files: list[tuple[str, bytes]]) -> bytes:
    """A complete ``POST`` request (headers and multipart body) with ``files`` under ``field_name``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """``(status, keep_alive)`` of one response; its body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get("connection", "").lower() != "close"


@dataclass
class Point:
    """What one (server, concurrency) measurement saw."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    client_cpu: float = 0.0

    def summary(self) -> dict:
        done = len(self.latencies)
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "concurrency": self.concurrency,
            "requests": done + sum(self.errors.values()),
            "ok": done,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(done / self.seconds, 2) if self.seconds else 0.0,
            "p50_ms": round(ms[len(ms) // 2], 2) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2) if ms else None,
            "client_cpu_ms_per_request": round(1000 * self.client_cpu / max(1, done), 3),
        }


async def drive(
    host: str, port: int, requests: list[bytes], concurrency: int, n_requests: int, max_seconds: float
) -> Point:
    """``n_requests`` requests (cycling through ``requests``) from ``concurrency`` connections.

    A warm-up of ``2 * concurrency`` requests is sent first and not counted. The measurement stops
    early after ``max_seconds``.
    """
    point = Point(concurrency)
    issued = 0
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [
        await asyncio.open_connection(host, port) for _ in range(concurrency)
    ]  # opened once: the warm-up and the measurement use the same keep-alive connections

    async def send(slot: int, raw: bytes) -> tuple[int, bool]:
        """One request on the slot's connection; a connection the server closed while idle (its
        keep-alive timeout: uvicorn's is 5 s) is reopened and the request sent again, once."""
        for attempt in (0, 1):
            if connections[slot] is None:
                connections[slot] = await asyncio.open_connection(host, port)
            reader, writer = connections[slot]  # type: ignore[misc]
            try:
                writer.write(raw)
                return await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError) as e:
                writer.close()
                connections[slot] = None
                if attempt or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                    raise
        raise AssertionError("unreachable")

    async def worker(slot: int, stop_at: float, count: int) -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < stop_at:
            raw = requests[issued % len(requests)]
            issued += 1
            start = time.perf_counter()
            try:
                status, keep_alive = await send(slot, raw)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                point.errors[type(e).__name__] = point.errors.get(type(e).__name__, 0) + 1
                continue
            if status == 200:
                point.latencies.append(time.perf_counter() - start)
            else:
                point.errors[str(status)] = point.errors.get(str(status), 0) + 1
            if not keep_alive:
                connections[slot][1].close()  # type: ignore[index]
                connections[slot] = None

    try:
        warm = 2 * concurrency
        await asyncio.gather(*(worker(i, time.perf_counter() + 120, warm) for i in range(concurrency)))
        point.latencies.clear()
        point.errors.clear()
        issued = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(i, start + max_seconds, n_requests) for i in range(concurrency)))
        point.seconds, point.client_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        for connection in connections:
            if connection is not None:
                connection[1].close()
    return point
