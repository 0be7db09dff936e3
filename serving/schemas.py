"""Request fields and response models of the HTTP API (CONTRACTS "HTTP API").

Requests are multipart forms, so their fields are declared as reusable ``Annotated`` types (the
routes use them as parameters and FastAPI validates them); responses are pydantic models given as
``response_model``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import File, Form, Query, UploadFile
from pydantic import BaseModel, BeforeValidator, Field

from serving.classification import CALIBRATED, UNKNOWN, parse_threshold

# ------------------------------------------------------------------------------------------ requests

MAX_LABEL_LENGTH = 200

Images = Annotated[
    list[UploadFile], File(description="Image files (JPEG, PNG, WebP, BMP, GIF, TIFF), repeated.")
]
Queries = Annotated[list[UploadFile], File(description="Query images to classify, repeated.")]
SupportImages = Annotated[
    list[UploadFile],
    File(description="Support images, repeated; `support_labels` gives their labels in order."),
]
OptionalSupportImages = Annotated[
    list[UploadFile] | None,
    File(description="Support images, repeated (or give `support_set_id`)."),
]
SupportLabels = Annotated[
    list[str], Form(description="One label per support image, repeated, in the order of the `support` files.")
]
OptionalSupportLabels = Annotated[
    list[str] | None, Form(description="One label per support image, in the order of the `support` files.")
]
SupportSetId = Annotated[
    str | None, Form(description="Use a stored support set instead of uploading support images.")
]
Threshold = Annotated[
    float | None,
    Form(
        ge=-1.0,
        le=1.0,
        description="Cosine similarity in [-1, 1]; a query whose best score is below it is labelled `unknown`.",
    ),
]
ClassifyThreshold = Annotated[
    Annotated[float, Field(ge=-1.0, le=1.0)] | Literal["calibrated"] | None,
    BeforeValidator(parse_threshold),
    Query(
        description="Open-set rejection: a cosine similarity in [-1, 1], or `calibrated` for the threshold "
        "calibrated at export on the validation split (`/info` `open_set`). An image whose best cosine to "
        f"the training-class prototypes is below it is labelled `{UNKNOWN}` with `rejected: true`. "
        "Needs an export with prototypes (otherwise 422)."
    ),
]
TopK = Annotated[
    int, Query(ge=1, le=100_000, description="How many classes to return per image (at most C).")
]
SetName = Annotated[str, Form(min_length=1, max_length=200, description="A name for the support set.")]

# ----------------------------------------------------------------------------------------- responses


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `invalid_image`.")
    message: str = Field(description="What was wrong and what to do.")
    request_id: str | None = Field(
        None, description="The request's `X-Request-ID` (the client's, or one the server made): quote it."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class LabelProbability(BaseModel):
    label: str
    probability: float


class ClassifyResult(BaseModel):
    filename: str
    label: str = Field(description=f"The most probable class, or `{UNKNOWN}` when `rejected`.")
    rejected: bool = Field(
        description="Whether `similarity` is below the threshold (never true without a threshold)."
    )
    similarity: float | None = Field(
        description="Best cosine to the training-class prototypes; null when the export has none."
    )
    top_k: list[LabelProbability] = Field(description="The head's most probable classes, also when rejected.")


class ClassifyResponse(BaseModel):
    model: str = Field(description="sha256 of encoder.onnx: the model's identity.")
    threshold: float | None = Field(
        description=f"The threshold applied (the calibrated value for `{CALIBRATED}`), or null."
    )
    results: list[ClassifyResult]


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(
        description="L2-normalised embeddings, one row per image, in order."
    )


class FewShotResult(BaseModel):
    filename: str
    label: str = Field(
        description=f"The nearest class by cosine similarity to its prototype, or `{UNKNOWN}` when `rejected`."
    )
    rejected: bool = Field(
        description="Whether the best score is below `threshold` (a support class may itself be named "
        f"`{UNKNOWN}`: this field, not the label, says whether the query was rejected)."
    )
    scores: dict[str, float] = Field(description="Cosine similarity to each class prototype.")


class FewShotResponse(BaseModel):
    model: str
    classes: list[str] = Field(description="The support classes, in order of first appearance.")
    threshold: float | None
    support_set_id: str | None
    results: list[FewShotResult]


class SupportSetOut(BaseModel):
    id: str
    name: str
    model: str = Field(description="sha256 of the encoder that created the set.")
    compatible: bool = Field(
        description="Whether the model this server runs can use the set: it made every image's "
        "embedding, or the image is kept and is re-embedded on first use."
    )
    embedding_dim: int = Field(description="Embedding size of the model that created the set.")
    num_images: int
    kept_images: int = Field(
        0, description="Images kept in the database (CLCE_KEEP_SUPPORT_IMAGES): they survive a model change."
    )
    classes: dict[str, int] = Field(description="Support images per label.")
    created: str
    updated: str


class SupportSetList(BaseModel):
    support_sets: list[SupportSetOut]


class DeleteResponse(BaseModel):
    id: str
    deleted: bool


class BatchingInfo(BaseModel):
    max_batch: int
    max_wait_ms: float
    max_queue: int


class LimitsInfo(BaseModel):
    max_files: int = Field(description="Most image files in one request, over all its file fields.")
    max_upload_bytes: int = Field(description="Most bytes in one request body.")
    max_image_pixels: int = Field(description="Most pixels (width x height) of one image, from its header.")
    max_request_pixels: int = Field(
        description="Most pixels all the images of one request decode to (JPEGs at their reduced decode size)."
    )


class OpenSetInfo(BaseModel):
    prototypes: bool = Field(description="Whether the export has training-class prototypes (`similarity`).")
    calibrated_threshold: float | None = Field(
        description="The threshold `threshold=calibrated` applies; null when the card has none."
    )
    keep: float | None = Field(
        description="The fraction of validation images the calibrated threshold keeps."
    )


class InfoResponse(BaseModel):
    model: str = Field(description="sha256 of encoder.onnx.")
    model_name: str
    precision: str | None = Field(None, description="Weights of the export: `fp32` or `fp16`.")
    num_classes: int
    labels: list[str]
    embedding_dim: int
    input_size: list[int]
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: list[float]
    std: list[float]
    loss: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    opset: int | None = None
    versions: dict[str, Any] | None = None
    created: str | None = None
    device: str
    providers: list[str]
    batching: BatchingInfo
    limits: LimitsInfo
    open_set: OpenSetInfo


class LiveResponse(BaseModel):
    status: str = "alive"


class ReadyResponse(BaseModel):
    ready: bool
    reasons: list[str] = Field(
        default_factory=list, description="Why the server is not ready (empty when ready)."
    )
    device: str
    providers: list[str]


def document_limits(schema: dict[str, Any], limits: LimitsInfo) -> dict[str, Any]:
    """Write the server's limits into its OpenAPI schema: ``maxItems`` on every file field, and a note.

    The limits are settings, so the request models cannot carry them; this edits the generated
    schema in place (``app.openapi``) and returns it. The limits themselves are enforced by the
    service (413 ``too_many_files`` / ``too_many_pixels``), not by validation.
    """
    note = (
        f" At most {limits.max_files} files per request over all file fields (CLCE_MAX_FILES), "
        f"{limits.max_image_pixels} pixels per image (CLCE_MAX_IMAGE_PIXELS) and "
        f"{limits.max_request_pixels} decoded pixels per request (CLCE_MAX_REQUEST_PIXELS)."
    )
    for body in schema.get("components", {}).get("schemas", {}).values():
        for field in body.get("properties", {}).values():
            arrays = [field, *field.get("anyOf", ())]
            files = [a for a in arrays if a.get("type") == "array" and _is_file(a.get("items", {}))]
            for array in files:
                array["maxItems"] = limits.max_files
            if files and note not in field.get("description", ""):
                field["description"] = field.get("description", "") + note
    return schema


def _is_file(item: dict[str, Any]) -> bool:
    return item.get("format") == "binary" or item.get("contentMediaType") == "application/octet-stream"


#: The error responses every protected route may give, for the OpenAPI page.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Bad input (empty file, corrupt image, ...)",
        401: "Missing or wrong X-API-Key",
        404: "Unknown support set",
        409: "Support set made by another model",
        413: "Too many files, bytes or pixels (per image or per request): see `GET /info` limits",
        415: "Not an image, or an unsupported format",
        422: "Missing or invalid fields",
        429: "Queue full; retry after Retry-After seconds",
    }.items()
}


class ReloadResponse(BaseModel):
    model: str = Field(description="sha256 of the encoder in service now.")
    previous: str = Field(description="sha256 of the encoder in service before.")
    changed: bool = Field(description="False when CLCE_MODEL_DIR holds the model in service already.")
    seconds: float = Field(description="Load, warm-up, switch and closing the old model.")
