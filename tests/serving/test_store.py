"""Support sets persist across restarts, belong to one model (409 otherwise); altered exports refuse to start."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from clce_core.export_folder import ExportFolderError, read_card
from serving.app import create_app
from serving.settings import Settings
from serving.store import StoreError, SupportSetStore
from tests.serving.conftest import DIM, assert_error, files, image_bytes, make_export, wait_ready


def _create_set(client: TestClient) -> str:
    r = client.post(
        "/support-sets",
        files=files("support", ("r.png", image_bytes("red")), ("b.png", image_bytes("blue"))),
        data={"name": "kept", "support_labels": ["r", "b"]},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_sets_survive_a_restart_and_store_embeddings_not_images(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        set_id = _create_set(c)
        before = c.get(f"/support-sets/{set_id}").json()
    with TestClient(create_app(settings)) as c:  # a new app on the same database file
        wait_ready(c)
        assert c.get(f"/support-sets/{set_id}").json() == before
        r = c.post("/fewshot", files=files("queries", image_bytes("blue")), data={"support_set_id": set_id})
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "b"

    db = sqlite3.connect(settings.db_path)
    rows = db.execute(
        "SELECT label, filename, length(embedding) FROM support_embeddings ORDER BY id"
    ).fetchall()
    model = db.execute("SELECT model_sha256 FROM support_sets").fetchone()[0]
    db.close()
    assert rows == [
        ("r", "r.png", 4 * DIM),
        ("b", "b.png", 4 * DIM),
    ]  # D float32 each: embeddings, not images
    assert model == before["model"]


def test_set_made_by_another_model_is_a_409(
    make_settings: Callable[..., Settings], other_model_dir: Path
) -> None:
    with TestClient(create_app(make_settings())) as c:
        wait_ready(c)
        set_id = _create_set(c)
    with TestClient(create_app(make_settings(model_dir=other_model_dir))) as c:
        wait_ready(c)
        listed = c.get("/support-sets").json()["support_sets"]
        assert [(s["id"], s["compatible"]) for s in listed] == [(set_id, False)]
        q = files("queries", image_bytes())
        error = assert_error(
            c.post("/fewshot", files=q, data={"support_set_id": set_id}),
            409,
            "model_mismatch",
            set_id,
            "not comparable",
        )
        assert "Create the set again" in error["message"]
        more = c.post(
            f"/support-sets/{set_id}/images",
            files=files("support", image_bytes()),
            data={"support_labels": ["r"]},
        )
        assert_error(more, 409, "model_mismatch")
        assert c.get(f"/support-sets/{set_id}").status_code == 200  # still visible ...
        assert c.delete(f"/support-sets/{set_id}").status_code == 200  # ... and deletable


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


def test_store_directly(tmp_path: Path) -> None:
    store = SupportSetStore(tmp_path / "deep" / "dir" / "s.db")
    emb = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    info = store.create("n", "sha-a", ["x", "y"], emb, ["1.png", "2.png"])
    labels, loaded = store.load(info.id, "sha-a")
    assert labels == ["x", "y"] and np.array_equal(loaded, emb)
    store.add(info.id, "sha-a", ["x"], emb[:1] + 1, ["3.png"])
    labels, loaded = store.load(info.id, "sha-a")
    assert labels == ["x", "y", "x"] and loaded.shape == (3, DIM)
    assert store.get(info.id).classes == {"x": 2, "y": 1}
    store.delete(info.id)
    assert store.list_sets() == []
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT count(*) FROM support_embeddings").fetchone()[0] == 0  # cascade
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SupportSetStore(store.path)
