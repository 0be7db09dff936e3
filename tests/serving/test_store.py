"""Support sets through the app on both backends (SQLite, PostgreSQL): persistence, models, kept images; altered exports refuse to start."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from clce_core.export_folder import ExportFolderError, read_card
from serving.app import create_app
from serving.settings import Settings
from serving.store import SCHEMA_VERSION
from tests.serving.conftest import DIM, assert_error, files, image_bytes, make_export, wait_ready
from tests.serving.postgres import query


@pytest.fixture
def client_on(make_settings: Callable[..., Settings], db_url: str) -> Iterator[Callable[..., TestClient]]:
    """``client_on(**settings)``: a started app on this test's database (each backend), closed at the end."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> TestClient:
            client = stack.enter_context(TestClient(create_app(make_settings(db_url=db_url, **overrides))))
            wait_ready(client)
            return client

        yield start


def create_set(client: TestClient) -> str:
    r = client.post(
        "/support-sets",
        files=files("support", ("r.png", image_bytes("red")), ("b.png", image_bytes("blue"))),
        data={"name": "kept", "support_labels": ["r", "b"]},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_sets_survive_a_restart_and_store_embeddings_not_images(
    make_settings: Callable[..., Settings], db_url: str
) -> None:
    settings = make_settings(db_url=db_url)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        set_id = create_set(c)
        before = c.get(f"/support-sets/{set_id}").json()
    with TestClient(create_app(settings)) as c:  # a new app on the same database
        wait_ready(c)
        assert c.get(f"/support-sets/{set_id}").json() == before
        r = c.post("/fewshot", files=files("queries", image_bytes("blue")), data={"support_set_id": set_id})
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "b"

    rows = query(
        db_url,
        "SELECT i.label, i.filename, i.image_sha256, e.model_sha256, length(e.embedding) "
        "FROM support_items i JOIN support_embeddings e ON e.item_id = i.id ORDER BY i.id",
    )
    assert rows == [
        ("r", "r.png", None, before["model"], 4 * DIM),
        ("b", "b.png", None, before["model"], 4 * DIM),
    ]  # D float32 each: embeddings, not images
    assert query(db_url, "SELECT count(*) FROM support_images") == [(0,)]
    assert query(db_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert before["kept_images"] == 0


def test_support_set_lifecycle_on_each_backend(client_on: Callable[..., TestClient]) -> None:
    c = client_on()
    set_id = create_set(c)
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
    set_id = create_set(client_on())
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
    set_id = create_set(old)
    assert old.get(f"/support-sets/{set_id}").json()["kept_images"] == 2
    old_model = old.get("/info").json()["model"]

    new = client_on(model_dir=other_model_dir)  # keeping is not needed to USE kept images
    new_model = new.get("/info").json()["model"]
    (listed,) = new.get("/support-sets").json()["support_sets"]
    assert listed["compatible"] and listed["model"] == old_model
    embedded = "SELECT count(*) FROM support_embeddings WHERE model_sha256 = '{}'"
    assert query(db_url, embedded.format(new_model)) == [(0,)]  # lazily: not before first use
    r = new.post(
        "/fewshot",
        files=files("queries", image_bytes("blue"), image_bytes("red")),
        data={"support_set_id": set_id},
    )
    assert [q["label"] for q in r.json()["results"]] == ["b", "r"], r.text
    assert query(db_url, embedded.format(new_model)) == [(2,)]  # re-embedded once, saved
    assert query(db_url, embedded.format(old_model)) == [(2,)]  # the old model's are still there

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
    first, second = create_set(c), create_set(c)  # the same two files twice
    red = hashlib.sha256(image_bytes("red")).hexdigest()
    images = "SELECT sha256 FROM support_images ORDER BY sha256"
    assert len(query(db_url, images)) == 2 and (red,) in query(db_url, images)
    assert c.delete(f"/support-sets/{first}").status_code == 200
    assert len(query(db_url, images)) == 2  # still used by the second set
    assert c.delete(f"/support-sets/{second}").status_code == 200
    assert query(db_url, images) == []


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
