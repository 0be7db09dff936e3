"""The store itself on both backends: operations, schema versions and migrations, database URLs, lost databases."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from serving.app import create_app, load_settings
from serving.errors import ModelMismatch, SupportSetNotFound
from serving.settings import Settings
from serving.store import SCHEMA_VERSION, NewImages, StoreError, SupportSetStore
from serving.store.database import parse_url
from tests.serving.conftest import DIM, assert_error, files, image_bytes, wait_ready
from tests.serving.postgres import PostgresServer, query
from tests.serving.test_store import create_set


def test_store_directly(db_url: str) -> None:
    store = SupportSetStore(db_url)
    emb = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    info = store.create("n", "sha-a", NewImages(["x", "y"], emb, ["1.png", "2.png"]))
    loaded = store.load(info.id, "sha-a")
    assert loaded.labels == ["x", "y"] and np.array_equal(np.stack(loaded.embeddings), emb)
    assert loaded.missing == []
    store.add(info.id, "sha-a", NewImages(["x"], emb[:1] + 1, ["3.png"]))
    loaded = store.load(info.id, "sha-a")
    assert loaded.labels == ["x", "y", "x"] and np.stack(loaded.embeddings).shape == (3, DIM)
    assert store.get(info.id, "sha-a").classes == {"x": 2, "y": 1}
    other = store.get(info.id, "sha-b")
    assert (other.embedded, other.unusable, other.usable) == (0, 3, False)
    with pytest.raises(ModelMismatch, match="3 of its 3 images"):
        store.load(info.id, "sha-b")
    store.delete(info.id)
    assert store.list_sets("sha-a") == []
    with pytest.raises(SupportSetNotFound):
        store.delete(info.id)
    assert query(db_url, "SELECT count(*) FROM support_embeddings") == [(0,)]  # cascade
    assert query(db_url, "SELECT count(*) FROM support_items") == [(0,)]
    store.close()


def test_kept_images_are_returned_for_re_embedding(db_url: str) -> None:
    store = SupportSetStore(db_url)
    emb = np.ones((2, DIM), dtype=np.float32)
    info = store.create("n", "sha-a", NewImages(["x", "y"], emb, ["1.png", "2.png"], [b"one", b"two"]))
    loaded = store.load(info.id, "sha-b")
    assert [(k.filename, k.data) for k in loaded.missing] == [("1.png", b"one"), ("2.png", b"two")]
    assert loaded.embeddings == [None, None]
    store.save_embeddings(info.id, "sha-b", [k.item_id for k in loaded.missing], 2 * emb)
    store.save_embeddings(info.id, "sha-b", [k.item_id for k in loaded.missing], 3 * emb)  # first wins
    again = store.load(info.id, "sha-b")
    assert again.missing == [] and np.array_equal(np.stack(again.embeddings), 2 * emb)
    store.delete(info.id)
    with pytest.raises(SupportSetNotFound):
        store.save_embeddings(info.id, "sha-b", [1], emb[:1])
    store.close()


def test_newer_schema_is_refused_naming_both_versions(db_url: str) -> None:
    SupportSetStore(db_url).close()
    engine = sa.create_engine(parse_url(db_url))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_version SET version = 99"))
    engine.dispose()
    with pytest.raises(StoreError, match=f"schema version 99, newer than this server's {SCHEMA_VERSION}"):
        SupportSetStore(db_url)


def test_replicas_starting_together_migrate_once(db_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: SupportSetStore(db_url), range(4)))
    assert sorted(s.found_version for s in stores) == [0, SCHEMA_VERSION, SCHEMA_VERSION, SCHEMA_VERSION]
    assert query(db_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    for store in stores:
        store.close()


# the schema of the SQLite store before versioned migrations (PRAGMA user_version = 1)
_V1_SCHEMA = """
CREATE TABLE support_sets (id TEXT PRIMARY KEY, name TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    embedding_dim INTEGER NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE support_embeddings (id INTEGER PRIMARY KEY AUTOINCREMENT,
    set_id TEXT NOT NULL REFERENCES support_sets(id) ON DELETE CASCADE, label TEXT NOT NULL,
    filename TEXT NOT NULL, embedding BLOB NOT NULL, created TEXT NOT NULL);
CREATE INDEX support_embeddings_by_set ON support_embeddings(set_id, id);
PRAGMA user_version = 1;
"""


def test_a_version_1_sqlite_file_is_upgraded_at_start_up(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "v1.sqlite3"
    settings = make_settings(db_path=path)
    with TestClient(create_app(settings)) as c:  # embeddings of this model, as the old store kept them
        wait_ready(c)
        model = c.get("/info").json()["model"]
        emb = c.post("/embed", files=files("images", image_bytes("red"), image_bytes("blue"))).json()
    path.unlink()
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    db.execute("INSERT INTO support_sets VALUES ('old', 'from v1', ?, ?, 't0', 't0')", (model, DIM))
    for label, vector in zip(["r", "b"], emb["embeddings"], strict=True):
        blob = np.asarray(vector, dtype="<f4").tobytes()
        db.execute(
            "INSERT INTO support_embeddings (set_id, label, filename, embedding, created) VALUES (?, ?, ?, ?, 't0')",
            ("old", label, f"{label}.png", blob),
        )
    db.commit()
    db.close()

    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        got = c.get("/support-sets/old").json()
        assert (got["name"], got["num_images"], got["classes"], got["compatible"]) == (
            "from v1",
            2,
            {"r": 1, "b": 1},
            True,
        )
        r = c.post("/fewshot", files=files("queries", image_bytes("blue")), data={"support_set_id": "old"})
        assert r.json()["results"][0]["label"] == "b", r.text
        new = create_set(c)  # ids continue after the upgraded rows
        assert c.get(f"/support-sets/{new}").json()["num_images"] == 2
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)  # older servers refuse it
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "support_embeddings_v1" not in tables
    db.close()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"db_url": "mysql://u@h/db"}, "backend 'mysql' is not supported"),
        ({"db_url": "sqlite://"}, "names no file"),
        ({"db_url": "not a url"}, "is not a database URL"),
        ({"db_url": "postgresql://u:secret@127.0.0.1:1/db"}, "cannot open the support-set database"),
    ],
    ids=["backend", "no-file", "garbage", "unreachable"],
)
def test_bad_database_urls_stop_the_start_up(
    make_settings: Callable[..., Settings], overrides: dict[str, str], words: str
) -> None:
    with pytest.raises(StoreError, match=words) as e, TestClient(create_app(make_settings(**overrides))):
        pass
    assert "secret" not in str(e.value)  # passwords never reach a message or the log


def test_db_path_is_an_alias_and_db_url_wins(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLCE_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CLCE_DB_PATH", str(tmp_path / "a.db"))
    assert load_settings().resolved_db_url == f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.setenv("CLCE_DB_URL", "postgresql://u@db.example/sets")  # e.g. over an image's default path
    assert load_settings().resolved_db_url == "postgresql://u@db.example/sets"


def test_a_database_lost_while_serving_is_a_503_not_a_500(
    make_settings: Callable[..., Settings], postgres: PostgresServer
) -> None:
    name = postgres.create_database()
    with TestClient(create_app(make_settings(db_url=postgres.url(name)))) as c:
        wait_ready(c)
        assert c.get("/support-sets").status_code == 200
        postgres.execute(f"DROP DATABASE {name} WITH (FORCE)")
        error = assert_error(c.get("/support-sets"), 503, "store_unavailable", "retry shortly")
        assert name in error["message"]  # which database, never its password
        assert c.get("/health/live").status_code == 200
