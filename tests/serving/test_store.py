"""Support sets on both backends (SQLite, PostgreSQL): persistence, models, kept images, migrations; altered exports refuse to start."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from clce_core.export_folder import ExportFolderError, read_card
from serving.app import create_app, load_settings
from serving.errors import ModelMismatch, SupportSetNotFound
from serving.settings import Settings
from serving.store import SCHEMA_VERSION, NewImages, StoreError, SupportSetStore
from serving.store.database import parse_url
from tests.serving.conftest import DIM, assert_error, files, image_bytes, make_export, wait_ready
from tests.serving.postgres import PostgresServer


@pytest.fixture
def client_on(make_settings: Callable[..., Settings], db_url: str) -> Iterator[Callable[..., TestClient]]:
    """``client_on(**settings)``: a started app on this test's database (each backend), closed at the end."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> TestClient:
            client = stack.enter_context(TestClient(create_app(make_settings(db_url=db_url, **overrides))))
            wait_ready(client)
            return client

        yield start


def _create_set(client: TestClient) -> str:
    r = client.post(
        "/support-sets",
        files=files("support", ("r.png", image_bytes("red")), ("b.png", image_bytes("blue"))),
        data={"name": "kept", "support_labels": ["r", "b"]},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(parse_url(db_url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def test_sets_survive_a_restart_and_store_embeddings_not_images(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    settings = make_settings(db_url=db_url)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        set_id = _create_set(c)
        before = c.get(f"/support-sets/{set_id}").json()
    with TestClient(create_app(settings)) as c:  # a new app on the same database
        wait_ready(c)
        assert c.get(f"/support-sets/{set_id}").json() == before
        r = c.post("/fewshot", files=files("queries", image_bytes("blue")), data={"support_set_id": set_id})
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "b"

    rows = _rows(
        db_url,
        "SELECT i.label, i.filename, i.image_sha256, e.model_sha256, length(e.embedding) "
        "FROM support_items i JOIN support_embeddings e ON e.item_id = i.id ORDER BY i.id",
    )
    assert rows == [
        ("r", "r.png", None, before["model"], 4 * DIM),
        ("b", "b.png", None, before["model"], 4 * DIM),
    ]  # D float32 each: embeddings, not images
    assert _rows(db_url, "SELECT count(*) FROM support_images") == [(0,)]
    assert _rows(db_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert before["kept_images"] == 0


def test_support_set_lifecycle_on_each_backend(client_on: Callable[..., TestClient]) -> None:
    c = client_on()
    set_id = _create_set(c)
    r = c.post(
        f"/support-sets/{set_id}/images",
        files=files("support", image_bytes("green"), image_bytes((20, 190, 40))),
        data={"support_labels": ["g", "g"]},
    )
    assert r.status_code == 200 and r.json()["classes"] == {"r": 1, "b": 1, "g": 2}, r.text
    assert [s["id"] for s in c.get("/support-sets").json()["support_sets"]] == [set_id]
    r = c.post(
        "/fewshot",
        files=files("queries", image_bytes("blue"), image_bytes("green"), image_bytes("red")),
        data={"support_set_id": set_id},
    )
    assert [q["label"] for q in r.json()["results"]] == ["b", "g", "r"], r.text
    assert c.delete(f"/support-sets/{set_id}").json() == {"id": set_id, "deleted": True}
    assert_error(c.get(f"/support-sets/{set_id}"), 404, "support_set_not_found", set_id)
    assert_error(c.delete(f"/support-sets/{set_id}"), 404, "support_set_not_found", set_id)
    more = c.post(
        f"/support-sets/{set_id}/images",
        files=files("support", image_bytes()),
        data={"support_labels": ["r"]},
    )
    assert_error(more, 404, "support_set_not_found", set_id)
    q = c.post("/fewshot", files=files("queries", image_bytes()), data={"support_set_id": set_id})
    assert_error(q, 404, "support_set_not_found", set_id)
    assert c.get("/support-sets").json() == {"support_sets": []}


def test_set_made_by_another_model_is_a_409(
    client_on: Callable[..., TestClient], other_model_dir: Path
) -> None:
    set_id = _create_set(client_on())
    c = client_on(model_dir=other_model_dir)
    listed = c.get("/support-sets").json()["support_sets"]
    assert [(s["id"], s["compatible"]) for s in listed] == [(set_id, False)]
    q = files("queries", image_bytes())
    error = assert_error(
        c.post("/fewshot", files=q, data={"support_set_id": set_id}),
        409,
        "model_mismatch",
        set_id,
        "not comparable",
        "2 of its 2 images",
    )
    assert "Create the set again" in error["message"]
    assert "CLCE_KEEP_SUPPORT_IMAGES=true" in error["message"]  # says how to keep them
    more = c.post(
        f"/support-sets/{set_id}/images",
        files=files("support", image_bytes()),
        data={"support_labels": ["r"]},
    )
    assert_error(more, 409, "model_mismatch")
    assert c.get(f"/support-sets/{set_id}").status_code == 200  # still visible ...
    assert c.delete(f"/support-sets/{set_id}").status_code == 200  # ... and deletable


def test_kept_images_survive_a_model_change(
    client_on: Callable[..., TestClient], other_model_dir: Path, db_url: str
) -> None:
    old = client_on(keep_support_images=True)
    set_id = _create_set(old)
    assert old.get(f"/support-sets/{set_id}").json()["kept_images"] == 2
    old_model = old.get("/info").json()["model"]

    new = client_on(model_dir=other_model_dir)  # keeping is not needed to USE kept images
    new_model = new.get("/info").json()["model"]
    (listed,) = new.get("/support-sets").json()["support_sets"]
    assert listed["compatible"] and listed["model"] == old_model
    embedded = "SELECT count(*) FROM support_embeddings WHERE model_sha256 = '{}'"
    assert _rows(db_url, embedded.format(new_model)) == [(0,)]  # lazily: not before first use
    r = new.post(
        "/fewshot",
        files=files("queries", image_bytes("blue"), image_bytes("red")),
        data={"support_set_id": set_id},
    )
    assert [q["label"] for q in r.json()["results"]] == ["b", "r"], r.text
    assert _rows(db_url, embedded.format(new_model)) == [(2,)]  # re-embedded once, saved
    assert _rows(db_url, embedded.format(old_model)) == [(2,)]  # the old model's are still there

    # images added without keeping them cannot follow the next change: the old model says so
    r = new.post(
        f"/support-sets/{set_id}/images",
        files=files("support", image_bytes("green")),
        data={"support_labels": ["g"]},
    )
    assert r.status_code == 200 and r.json()["kept_images"] == 2 and r.json()["num_images"] == 3, r.text
    back = client_on()  # the old model, keeping no images
    assert_error(
        back.post("/fewshot", files=files("queries", image_bytes()), data={"support_set_id": set_id}),
        409,
        "model_mismatch",
        "1 of its 3 images",
    )


def test_kept_images_are_stored_once_and_removed_with_the_last_set(
    client_on: Callable[..., TestClient], db_url: str
) -> None:
    c = client_on(keep_support_images=True)
    first, second = _create_set(c), _create_set(c)  # the same two files twice
    red = hashlib.sha256(image_bytes("red")).hexdigest()
    images = "SELECT sha256 FROM support_images ORDER BY sha256"
    assert len(_rows(db_url, images)) == 2 and (red,) in _rows(db_url, images)
    assert c.delete(f"/support-sets/{first}").status_code == 200
    assert len(_rows(db_url, images)) == 2  # still used by the second set
    assert c.delete(f"/support-sets/{second}").status_code == 200
    assert _rows(db_url, images) == []


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(model_dir, dest)
    return dest


def test_altered_encoder_refuses_to_start(
    model_dir: Path, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    bad = _copy(model_dir, tmp_path)
    with open(bad / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(
        ExportFolderError, match=r"encoder.onnx has sha256 .* but model.json records .*Refusing to start"
    ):
        read_card(bad)
    with (
        pytest.raises(ExportFolderError, match="Refusing to start"),
        TestClient(create_app(make_settings(model_dir=bad))),
    ):
        pass


def test_swapped_head_refuses_to_start(model_dir: Path, other_model_dir: Path, tmp_path: Path) -> None:
    bad = _copy(model_dir, tmp_path)
    shutil.copy(other_model_dir / "head.onnx", bad / "head.onnx")
    with pytest.raises(ExportFolderError, match="head.onnx has sha256"):
        read_card(bad)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: (d / "head.onnx").unlink(), "lacks head.onnx"),
        (lambda d: (d / "model.json").write_text("{not json"), "not readable JSON"),
        (lambda d: _edit(d, schema_version=2), "schema_version 2"),
        (lambda d: _edit(d, files={}), "no sha256 for encoder.onnx"),
        (lambda d: _edit(d, interpolation="random"), "interpolation 'random' is not supported"),
        (lambda d: _edit(d, labels=[]), "'labels' must be a non-empty list"),
    ],
    ids=["missing-file", "bad-json", "schema", "no-sha", "interpolation", "no-labels"],
)
def test_broken_export_folders_are_named(
    model_dir: Path, tmp_path: Path, change: Callable[[Path], object], words: str
) -> None:
    bad = _copy(model_dir, tmp_path)
    change(bad)
    with pytest.raises(ExportFolderError, match=words.replace("(", r"\(")):
        read_card(bad)


def _edit(folder: Path, **fields: object) -> None:
    card = json.loads((folder / "model.json").read_text())
    card.update(fields)
    (folder / "model.json").write_text(json.dumps(card))


def test_card_that_disagrees_with_the_onnx_files(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    folder = make_export(tmp_path / "m", labels=("a", "b", "c", "d"))
    _edit(folder, labels=["a", "b", "c"])  # head has 4 outputs
    with (
        pytest.raises(ExportFolderError, match="head output has shape .* lists 3 labels"),
        TestClient(create_app(make_settings(model_dir=folder))),
    ):
        pass
    folder2 = make_export(tmp_path / "m2", input_size=(3, 32, 32))
    _edit(folder2, input_size=[3, 40, 40])
    with (
        pytest.raises(ExportFolderError, match="height 32 but model.json input_size says 40"),
        TestClient(create_app(make_settings(model_dir=folder2))),
    ):
        pass


def test_cli_refuses_a_bad_model_dir_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from serving.__main__ import main

    assert main(["--model-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model folder") and "does not exist" in err and "\n" not in err


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
    assert _rows(db_url, "SELECT count(*) FROM support_embeddings") == [(0,)]  # cascade
    assert _rows(db_url, "SELECT count(*) FROM support_items") == [(0,)]
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
    assert _rows(db_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
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
        new = _create_set(c)  # ids continue after the upgraded rows
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
