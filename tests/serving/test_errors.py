"""Bad input is never a 500: every case gets a 4xx with the JSON error body naming what is wrong."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import assert_error, files, image_bytes, wait_ready


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format="PNG")  # compresses to almost nothing: a decompression bomb
    return buf.getvalue()


def _gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "code", "words"),
    [
        (("empty.png", b""), 400, "empty_file", ["empty.png", "empty"]),
        (("half.png", image_bytes(size=(64, 64))[:120]), 400, "invalid_image", ["half.png", "truncated"]),
        (
            ("notes.txt", b"just some text, not pixels"),
            415,
            "unsupported_media_type",
            ["notes.txt", "not an image"],
        ),
        (("pic.ppm", image_bytes(fmt="PPM")), 415, "unsupported_media_type", ["PPM", "JPEG"]),
        (("bomb.png", _png((8000, 8000))), 413, "image_too_large", ["bomb.png", "64000000", "limit"]),
    ],
    ids=["empty", "truncated", "non-image", "unsupported-type", "decompression-bomb"],
)
def test_bad_image_files(
    client: TestClient, payload: tuple[str, bytes], status: int, code: str, words: list[str]
) -> None:
    r = client.post("/classify", files=files("images", ("fine.png", image_bytes()), payload))
    error = assert_error(r, status, code, *words)
    assert "images[1]" in error["message"]  # the second file is the bad one


def test_gif_is_accepted(client: TestClient) -> None:
    assert client.post("/embed", files=files("images", ("a.gif", _gif_bytes()))).status_code == 200


def test_too_many_files(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(max_files=3))) as c:
        wait_ready(c)
        r = c.post("/classify", files=files("images", *[image_bytes()] * 4))
        assert_error(r, 413, "too_many_files", "4 files", "limit is 3")
        r = c.post(
            "/fewshot",
            files=files("support", *[image_bytes()] * 2) + files("queries", *[image_bytes()] * 2),
            data={"support_labels": ["a", "b"]},
        )
        assert_error(r, 413, "too_many_files", "2 support + 2 queries")


def test_request_too_large(make_settings: Callable[..., Settings]) -> None:
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    with TestClient(create_app(make_settings(max_upload_bytes=50_000))) as c:
        wait_ready(c)
        assert_error(
            c.post("/classify", files=files("images", buf.getvalue())), 413, "request_too_large", "50000"
        )

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(20):
                yield b"x" * 10_000

        r = c.post(
            "/classify", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=abc"}
        )
        assert_error(r, 413, "request_too_large", "CLCE_MAX_UPLOAD_BYTES")
        assert c.post("/classify", files=files("images", image_bytes())).status_code == 200


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code", "words"),
    [
        ("/classify", {}, 422, "validation_error", ["images: field required"]),
        ("/classify", {"data": {"images": "not-a-file"}}, 422, "validation_error", ["images"]),
        (
            "/classify?top_k=0",
            {"files": files("images", image_bytes())},
            422,
            "validation_error",
            ["top_k", "greater than or equal to 1"],
        ),
        (
            "/classify?top_k=abc",
            {"files": files("images", image_bytes())},
            422,
            "validation_error",
            ["top_k"],
        ),
        (
            "/embed",
            {"files": files("pictures", image_bytes())},
            422,
            "validation_error",
            ["images: field required"],
        ),
        (
            "/fewshot",
            {"files": files("support", image_bytes()), "data": {"support_labels": ["a"]}},
            422,
            "validation_error",
            ["queries: field required"],
        ),
        (
            "/fewshot",
            {"files": files("queries", image_bytes())},
            422,
            "missing_field",
            ["support", "support_set_id"],
        ),
        (
            "/fewshot",
            {"files": files("queries", image_bytes()) + files("support", image_bytes())},
            422,
            "missing_field",
            ["support_labels"],
        ),
        (
            "/support-sets",
            {"files": files("support", image_bytes()), "data": {"support_labels": ["a"]}},
            422,
            "validation_error",
            ["name: field required"],
        ),
        (
            "/support-sets",
            {"files": files("support", image_bytes()), "data": {"name": "n"}},
            422,
            "validation_error",
            ["support_labels: field required"],
        ),
        (
            "/support-sets",
            {"data": {"name": "n", "support_labels": ["a"]}},
            422,
            "validation_error",
            ["support: field required"],
        ),
    ],
    ids=[
        "classify-no-files",
        "classify-text-instead-of-file",
        "top_k-zero",
        "top_k-not-int",
        "embed-wrong-field",
        "fewshot-no-queries",
        "fewshot-no-support",
        "fewshot-no-labels",
        "set-no-name",
        "set-no-labels",
        "set-no-images",
    ],
)
def test_missing_or_invalid_fields(
    client: TestClient, path: str, kwargs: dict, status: int, code: str, words: list[str]
) -> None:
    assert_error(client.post(path, **kwargs), status, code, *words)


@pytest.mark.parametrize("threshold", ["1.5", "-1.01", "abc", "nan"])
def test_threshold_out_of_range(client: TestClient, threshold: str) -> None:
    r = client.post(
        "/fewshot",
        files=files("support", image_bytes()) + files("queries", image_bytes()),
        data={"support_labels": ["a"], "threshold": threshold},
    )
    assert_error(r, 422, "validation_error", "threshold")


def test_labels_and_images_must_pair_up(client: TestClient) -> None:
    two = files("support", image_bytes("red"), image_bytes("blue"))
    q = files("queries", image_bytes())
    r = client.post("/fewshot", files=two + q, data={"support_labels": ["r", "b", "dog"]})
    assert_error(
        r, 422, "labels_mismatch", "2 support images but 3 support_labels", "class 'dog' has no support image"
    )
    r = client.post("/fewshot", files=two + q, data={"support_labels": ["r"]})
    assert_error(r, 422, "labels_mismatch", "support[1]", "have no label")
    r = client.post("/support-sets", files=two, data={"name": "s", "support_labels": ["r", "  "]})
    assert_error(r, 422, "labels_mismatch", "support_labels[1] is empty")
    r = client.post("/support-sets", files=two, data={"name": "s", "support_labels": ["r", "b", "c"]})
    assert_error(r, 422, "labels_mismatch", "class 'c' has no support image")


def test_support_and_set_id_together(client: TestClient) -> None:
    r = client.post(
        "/fewshot",
        files=files("support", image_bytes()) + files("queries", image_bytes()),
        data={"support_labels": ["a"], "support_set_id": "abc"},
    )
    assert_error(r, 422, "invalid_field", "not both")


def test_unknown_support_set(client: TestClient) -> None:
    q = files("queries", image_bytes())
    assert_error(
        client.post("/fewshot", files=q, data={"support_set_id": "nope"}),
        404,
        "support_set_not_found",
        "'nope'",
    )
    assert_error(client.get("/support-sets/nope"), 404, "support_set_not_found")
    assert_error(client.delete("/support-sets/nope"), 404, "support_set_not_found")
    r = client.post(
        "/support-sets/nope/images", files=files("support", image_bytes()), data={"support_labels": ["a"]}
    )
    assert_error(r, 404, "support_set_not_found")


def test_http_level_errors_use_the_same_body(client: TestClient) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found", "/nowhere")
    assert_error(client.get("/classify"), 405, "method_not_allowed", "GET")
    r = client.post(
        "/classify", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=zz"}
    )
    assert r.status_code in (400, 422) and set(r.json()) == {"error"}
    r = client.post("/classify", content=b"{}", headers={"Content-Type": "application/json"})
    assert_error(r, 422, "validation_error", "images")


def test_bad_input_never_500(client: TestClient) -> None:
    """A sweep of odd bodies: all 4xx, never a traceback."""
    odd = [
        {"files": files("images", ("x", b"\x89PNG\r\n\x1a\n" + b"\0" * 40))},  # PNG signature, broken chunks
        {"files": files("images", ("x.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 30))},  # JPEG header only
        {"files": files("images", ("x.gif", b"GIF89a" + b"\xff" * 20))},
        {"files": files("images", ("x.bmp", b"BM" + b"\xff" * 60))},
        {"files": files("images", ("x.webp", b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 20))},
        {"files": files("images", ("x.tif", b"II*\0" + b"\xff" * 20))},
    ]
    for kwargs in odd:
        r = client.post("/classify", **kwargs)
        assert 400 <= r.status_code < 500 and set(r.json()) == {"error"}, r.text
