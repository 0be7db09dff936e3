"""Two real server processes (``python -m serving``) on one PostgreSQL database.

- a set created through replica 1 is used for ``/fewshot`` through replica 2; a delete through 2 is
  seen by 1;
- 32 concurrent clients spread over both replicas for 30 s lose nothing acknowledged;
- ``kill -9`` of one replica during writes loses nothing acknowledged, and the other keeps serving.

"Acknowledged" is a 2xx answer: every acknowledged create, add and delete must be in the final
state, read through either replica. A write whose answer was lost with a killed replica may or may
not have happened; the checks allow exactly that and no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import files, image_bytes
from tests.serving.postgres import PostgresServer
from tests.serving.processes import Server, start_server

COLORS = ("red", "green", "blue")
# idle connections expire on the client before uvicorn closes them (5 s), so that no request is sent
# on a connection the server is closing (a ReadError that has nothing to do with the store)
KEEPALIVE = httpx.Limits(keepalive_expiry=2.0)


@contextlib.contextmanager
def replicas(model_dir: Path, db_url: str, n: int = 2) -> Iterator[list[Server]]:
    """``n`` servers on one database, started together, all ready."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                start_server(
                    "python -m serving", model_dir, db_url=db_url, preprocess_threads=1, log_level="warning"
                )
            )
            for _ in range(n)
        ]
        yield [s.wait_ready() for s in servers]


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.url(postgres.create_database())


@pytest.mark.slow
def test_a_set_made_through_one_replica_is_used_and_deleted_through_the_other(
    model_dir: Path, pg_url: str
) -> None:
    with replicas(model_dir, pg_url) as (one, two), httpx.Client(timeout=30) as http:
        r = http.post(
            f"{one.url}/support-sets",
            files=files("support", image_bytes("red"), image_bytes("blue")),
            data={"name": "shared", "support_labels": ["r", "b"]},
        )
        assert r.status_code == 201, r.text
        set_id = r.json()["id"]
        r = http.post(
            f"{two.url}/fewshot",
            files=files("queries", image_bytes("blue"), image_bytes("red")),
            data={"support_set_id": set_id},
        )
        assert r.status_code == 200 and [q["label"] for q in r.json()["results"]] == ["b", "r"], r.text
        assert http.delete(f"{two.url}/support-sets/{set_id}").status_code == 200
        assert http.get(f"{one.url}/support-sets/{set_id}").status_code == 404
        r = http.post(
            f"{one.url}/fewshot", files=files("queries", image_bytes()), data={"support_set_id": set_id}
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "support_set_not_found"
        assert http.get(f"{one.url}/support-sets").json() == {"support_sets": []}


@dataclass
class Ledger:
    """What the clients were told (acknowledged) and what they tried, per set name."""

    ids: dict[str, str] = field(default_factory=dict)  # name -> id, acknowledged creates
    attempted: set[str] = field(default_factory=set)  # names of every create sent
    images: dict[str, int] = field(default_factory=dict)  # name -> acknowledged image count
    unsure: dict[str, int] = field(default_factory=dict)  # name -> images added without an answer
    deleted: set[str] = field(default_factory=set)  # acknowledged deletes
    delete_unsure: set[str] = field(default_factory=set)
    acknowledged: int = 0  # 2xx writes
    served: Counter[str] = field(default_factory=Counter)  # replica URL -> 2xx answers
    failures: list[str] = field(default_factory=list)  # answers that are wrong on a live replica


async def _client(
    number: int, alive: list[str], stop_at: float, ledger: Ledger, names: Iterator[int]
) -> None:
    rng = random.Random(number)
    mine: list[str] = []  # names of my acknowledged, undeleted sets
    async with httpx.AsyncClient(timeout=30, limits=KEEPALIVE) as http:
        while time.monotonic() < stop_at:
            url = rng.choice(alive)
            roll = rng.random()
            try:
                if not mine or roll < 0.35:
                    name = f"c{number}-{next(names)}"
                    ledger.attempted.add(name)
                    colors = rng.sample(COLORS, 2)
                    r = await http.post(
                        f"{url}/support-sets",
                        files=files("support", *(image_bytes(c) for c in colors)),
                        data={"name": name, "support_labels": colors},
                    )
                    if r.status_code == 201:
                        ledger.served[url] += 1
                        ledger.ids[name], ledger.images[name] = r.json()["id"], 2
                        ledger.acknowledged += 1
                        mine.append(name)
                        continue
                elif roll < 0.7:
                    name = rng.choice(mine)
                    ledger.unsure[name] = ledger.unsure.get(name, 0) + 1
                    r = await http.post(
                        f"{url}/support-sets/{ledger.ids[name]}/images",
                        files=files("support", image_bytes("red")),
                        data={"support_labels": ["red"]},
                    )
                    if r.status_code == 200:
                        ledger.served[url] += 1
                        ledger.unsure[name] -= 1
                        ledger.images[name] += 1
                        ledger.acknowledged += 1
                        continue
                elif roll < 0.85:
                    name = rng.choice(mine)
                    r = await http.post(  # on any replica: what was acknowledged is there
                        f"{url}/fewshot",
                        files=files("queries", image_bytes("blue")),
                        data={"support_set_id": ledger.ids[name]},
                    )
                    if r.status_code == 200:
                        continue
                else:
                    name = mine.pop(rng.randrange(len(mine)))
                    ledger.delete_unsure.add(name)
                    r = await http.delete(f"{url}/support-sets/{ledger.ids[name]}")
                    if r.status_code == 200:
                        ledger.served[url] += 1
                        ledger.delete_unsure.discard(name)
                        ledger.deleted.add(name)
                        ledger.acknowledged += 1
                        continue
                ledger.failures.append(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:200]}")
            except httpx.TransportError as e:
                if url in alive:  # the replica we used is up: a lost answer is a failure
                    ledger.failures.append(f"{url}: {type(e).__name__}: {e}")


async def _run_clients(urls: list[str], clients: int, seconds: float, kill: Server | None = None) -> Ledger:
    """``clients`` concurrent clients for ``seconds``; ``kill`` gets SIGKILL halfway through."""
    ledger = Ledger()
    alive = list(urls)
    stop_at = time.monotonic() + seconds
    names = itertools.count()
    tasks = [asyncio.create_task(_client(i, alive, stop_at, ledger, names)) for i in range(clients)]
    if kill is not None:
        await asyncio.sleep(seconds / 2)
        alive.remove(kill.url)  # first: from here on, failures there are expected
        kill.signal(signal.SIGKILL)
    await asyncio.gather(*tasks)
    return ledger


def _check(ledger: Ledger, url: str) -> dict[str, dict[str, object]]:
    """Assert that the state read through ``url`` holds every acknowledged write; return it by name."""
    with httpx.Client(timeout=30) as http:
        listed = http.get(f"{url}/support-sets").json()["support_sets"]
    state = {s["name"]: s for s in listed}
    assert set(state) <= ledger.attempted, set(state) - ledger.attempted  # nothing invented
    for name, set_id in ledger.ids.items():
        if name in ledger.deleted:
            assert name not in state, f"acknowledged delete of {name} lost"
        elif name not in ledger.delete_unsure:
            assert name in state and state[name]["id"] == set_id, f"acknowledged set {name} lost"
            n = state[name]["num_images"]
            low, high = ledger.images[name], ledger.images[name] + ledger.unsure.get(name, 0)
            assert low <= n <= high, f"{name}: {n} images, acknowledged {low} (+{high - low} unanswered)"
    return state


@pytest.mark.slow
def test_32_clients_over_two_replicas_for_30_s_lose_nothing_acknowledged(
    model_dir: Path, pg_url: str
) -> None:
    with replicas(model_dir, pg_url) as servers:
        urls = [s.url for s in servers]
        ledger = asyncio.run(_run_clients(urls, clients=32, seconds=30))
        assert ledger.failures == [], ledger.failures[:5]
        assert ledger.unsure == {name: 0 for name in ledger.unsure} and not ledger.delete_unsure
        assert ledger.acknowledged > 100, ledger.acknowledged  # the load really ran
        states = [_check(ledger, url) for url in urls]
        assert states[0] == states[1]  # both replicas read the same state
        survivors = set(ledger.ids) - ledger.deleted
        assert set(states[0]) == survivors
        print(f"acknowledged writes: {ledger.acknowledged}; sets alive: {len(survivors)}; lost: 0")


@pytest.mark.slow
def test_kill_9_of_one_replica_loses_nothing_acknowledged_and_the_other_keeps_serving(
    model_dir: Path, pg_url: str
) -> None:
    with replicas(model_dir, pg_url) as (victim, survivor):
        ledger = asyncio.run(_run_clients([victim.url, survivor.url], clients=16, seconds=12, kill=victim))
        assert victim.wait(10) == -signal.SIGKILL
        assert ledger.served[victim.url] > 0 and ledger.served[survivor.url] > 0, ledger.served
        assert ledger.failures == [], (
            survivor.url,
            ledger.failures[:5],
        )  # the survivor answered every request
        _check(ledger, survivor.url)
        with httpx.Client(timeout=30) as http:  # and it still serves, reads and writes
            assert http.get(f"{survivor.url}/health/ready").status_code == 200
            r = http.post(
                f"{survivor.url}/support-sets",
                files=files("support", image_bytes("red")),
                data={"name": "after", "support_labels": ["r"]},
            )
            assert r.status_code == 201, r.text
        print(f"acknowledged writes: {ledger.acknowledged} ({dict(ledger.served)}); lost: 0")
