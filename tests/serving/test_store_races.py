"""Support-set races (issue 12, item 4): concurrent clients through httpx against the real app, both backends.

Each store operation is one transaction with one snapshot, so: a listing never 404s while other
clients delete sets; adding images to a set being deleted answers 200 (before the delete) or 404
(after), never 500; few-shot on a set being deleted answers 200 or 404, never 500.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import files, image_bytes, running

pytestmark = pytest.mark.anyio
SETS = 12


async def _create(client: httpx.AsyncClient, name: str) -> str:
    r = await client.post(
        "/support-sets",
        files=files("support", image_bytes("red"), image_bytes("blue"), image_bytes("green")),
        data={"name": name, "support_labels": ["r", "b", "g"]},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_listing_never_404s_while_other_clients_delete(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    async with running(create_app(make_settings(db_url=db_url)), raise_errors=False) as client:
        ids = [await _create(client, f"s{i}") for i in range(2 * SETS)]
        deleted: list[httpx.Response] = []
        listings: list[httpx.Response] = []

        async def delete_each(chunk: list[str]) -> None:
            for set_id in chunk:
                deleted.append(await client.delete(f"/support-sets/{set_id}"))

        async def list_until_done(deleting: asyncio.Future[object]) -> None:
            while not deleting.done():
                listings.append(await client.get("/support-sets"))

        deleting = asyncio.gather(*(delete_each(ids[i::4]) for i in range(4)))
        await asyncio.gather(deleting, *(list_until_done(deleting) for _ in range(4)))
        assert Counter(r.status_code for r in deleted) == Counter({200: 2 * SETS})
        assert listings and Counter(r.status_code for r in listings) == Counter({200: len(listings)})
        for r in listings:  # every listing is one snapshot: whole sets, each with its 3 images
            assert all(s["num_images"] == 3 for s in r.json()["support_sets"]), r.json()
        assert (await client.get("/support-sets")).json() == {"support_sets": []}


async def test_add_to_a_set_being_deleted_is_200_or_404(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    async with running(create_app(make_settings(db_url=db_url)), raise_errors=False) as client:
        ids = [await _create(client, f"s{i}") for i in range(SETS)]

        async def add(set_id: str) -> httpx.Response:
            return await client.post(
                f"/support-sets/{set_id}/images",
                files=files("support", image_bytes("red")),
                data={"support_labels": ["r"]},
            )

        races = await asyncio.gather(
            *(asyncio.gather(add(set_id), client.delete(f"/support-sets/{set_id}")) for set_id in ids)
        )
        for added, deleted in races:
            assert deleted.status_code == 200, deleted.text
            assert added.status_code in (200, 404), added.text
            if added.status_code == 404:
                assert added.json()["error"]["code"] == "support_set_not_found"
        assert (await add(ids[0])).status_code == 404  # and after the delete, always 404
        assert (await client.get("/support-sets")).json() == {"support_sets": []}


async def test_fewshot_on_a_set_being_deleted_is_200_then_404(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    async with running(create_app(make_settings(db_url=db_url)), raise_errors=False) as client:
        ids = [await _create(client, f"s{i}") for i in range(SETS // 2)]
        answers: list[httpx.Response] = []

        async def use_until_gone(set_id: str, used: asyncio.Event) -> None:
            while True:
                r = await client.post(
                    "/fewshot", files=files("queries", image_bytes("blue")), data={"support_set_id": set_id}
                )
                answers.append(r)
                if r.status_code != 200:
                    return
                used.set()

        async def race(set_id: str) -> httpx.Response:
            used = asyncio.Event()
            users = asyncio.gather(*(use_until_gone(set_id, used) for _ in range(4)))
            await used.wait()  # delete while the set is in use: its users are mid-request
            deleted = await client.delete(f"/support-sets/{set_id}")
            await users
            return deleted

        deletes = await asyncio.gather(*(race(set_id) for set_id in ids))
        assert [r.status_code for r in deletes] == [200] * len(ids)
        statuses = Counter(r.status_code for r in answers)
        assert set(statuses) == {200, 404} and statuses[404] == 4 * len(ids), statuses
        assert all(r.json()["results"][0]["label"] == "b" for r in answers if r.status_code == 200)
        assert all(
            r.json()["error"]["code"] == "support_set_not_found" for r in answers if r.status_code == 404
        )
