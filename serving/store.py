"""Support sets for few-shot classification, persisted in SQLite.

A support set stores EMBEDDINGS, never images: one row per support image with its label, file
name and the encoder's un-normalised float32 embedding, plus the set's name, times and the sha256
of the ``encoder.onnx`` that made the embeddings. Embeddings of different models are not
comparable, so a set is usable only under the model that made it; any other model gets
:class:`~serving.errors.ModelMismatch` (409). Sets survive restarts (the file is the state).

Schema (``PRAGMA user_version = 1``)::

    support_sets(id TEXT PK, name TEXT, model_sha256 TEXT, embedding_dim INTEGER, created TEXT, updated TEXT)
    support_embeddings(id INTEGER PK, set_id TEXT -> support_sets.id ON DELETE CASCADE,
                       label TEXT, filename TEXT, embedding BLOB (D little-endian float32), created TEXT)

Each call opens its own connection (WAL journal), so the store may be used from worker threads.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from serving.errors import ModelMismatch, SupportSetNotFound

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS support_sets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    embedding_dim INTEGER NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS support_embeddings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    set_id TEXT NOT NULL REFERENCES support_sets(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    filename TEXT NOT NULL,
    embedding BLOB NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS support_embeddings_by_set ON support_embeddings(set_id, id);
"""
_DTYPE = np.dtype("<f4")


class StoreError(RuntimeError):
    """The database file cannot be opened or was written by a newer version."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class SupportSetInfo:
    """A support set's description (no embeddings).

    Attributes:
        classes: Image count per label, labels in order of first appearance.
    """

    id: str
    name: str
    model_sha256: str
    embedding_dim: int
    num_images: int
    classes: dict[str, int]
    created: str
    updated: str


class SupportSetStore:
    """Support sets in the SQLite file ``path`` (created with its folder when missing).

    Raises:
        StoreError: the file cannot be opened as a database of this schema.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has support-set schema version {version}; this server knows "
                        f"{SCHEMA_VERSION}. Use a newer server or another CLCE_DB_PATH"
                    )
                db.execute("PRAGMA journal_mode = WAL")
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open the support-set database {self.path}: {e}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            with db:  # one transaction: commit on success, roll back on error
                yield db
        finally:
            db.close()

    # ------------------------------------------------------------------------------------- reads

    def _info(self, db: sqlite3.Connection, set_id: str) -> SupportSetInfo:
        row = db.execute(
            "SELECT id, name, model_sha256, embedding_dim, created, updated FROM support_sets WHERE id = ?",
            (set_id,),
        ).fetchone()
        if row is None:
            raise SupportSetNotFound(f"no support set with id {set_id!r}; GET /support-sets lists them")
        labels = [
            r[0]
            for r in db.execute(
                "SELECT label FROM support_embeddings WHERE set_id = ? ORDER BY id", (set_id,)
            )
        ]
        return SupportSetInfo(
            id=row[0],
            name=row[1],
            model_sha256=row[2],
            embedding_dim=row[3],
            num_images=len(labels),
            classes=dict(Counter(labels)),
            created=row[4],
            updated=row[5],
        )

    def get(self, set_id: str) -> SupportSetInfo:
        """One set's description. Raises ``SupportSetNotFound``."""
        with self._connect() as db:
            return self._info(db, set_id)

    def list_sets(self) -> list[SupportSetInfo]:
        """Every set, oldest first."""
        with self._connect() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM support_sets ORDER BY created, id")]
            return [self._info(db, set_id) for set_id in ids]

    def _check_model(self, info: SupportSetInfo, model_sha256: str) -> None:
        if info.model_sha256 != model_sha256:
            raise ModelMismatch(
                f"support set {info.id!r} ({info.name!r}) holds embeddings of model {info.model_sha256[:12]}…, "
                f"but this server runs model {model_sha256[:12]}…; embeddings of different models are not "
                "comparable. Create the set again from its images with this model"
            )

    def load(self, set_id: str, model_sha256: str) -> tuple[list[str], np.ndarray]:
        """The labels and embeddings of a set made by this model.

        Returns:
            ``labels`` (N,) and ``embeddings`` ``(N, D)`` float32, un-normalised.

        Raises:
            SupportSetNotFound, ModelMismatch.
        """
        with self._connect() as db:
            info = self._info(db, set_id)
            self._check_model(info, model_sha256)
            rows = db.execute(
                "SELECT label, embedding FROM support_embeddings WHERE set_id = ? ORDER BY id", (set_id,)
            ).fetchall()
        labels = [r[0] for r in rows]
        emb = np.stack([np.frombuffer(r[1], dtype=_DTYPE) for r in rows]).astype(np.float32)  # (N, D)
        return labels, emb.reshape(len(rows), info.embedding_dim)

    # ------------------------------------------------------------------------------------ writes

    @staticmethod
    def _rows(
        set_id: str, labels: Sequence[str], filenames: Sequence[str], embeddings: np.ndarray, created: str
    ) -> list[tuple[str, str, str, bytes, str]]:
        emb = np.ascontiguousarray(embeddings, dtype=_DTYPE)  # (N, D)
        if emb.ndim != 2 or len(emb) != len(labels) or len(labels) != len(filenames):
            raise ValueError(
                f"need (N, D) embeddings with N labels and filenames, got {emb.shape}, {len(labels)}"
            )
        return [
            (set_id, label, name, emb[i].tobytes(), created)
            for i, (label, name) in enumerate(zip(labels, filenames, strict=True))
        ]

    def create(
        self,
        name: str,
        model_sha256: str,
        labels: Sequence[str],
        embeddings: np.ndarray,
        filenames: Sequence[str],
    ) -> SupportSetInfo:
        """Store a new set.

        Args:
            name: Free text.
            model_sha256: sha256 of the encoder that made ``embeddings``.
            labels: ``(N,)`` one label per image.
            embeddings: ``(N, D)`` un-normalised encoder outputs.
            filenames: ``(N,)`` the uploaded file names (for reference).
        """
        set_id = uuid.uuid4().hex
        created = _now()
        rows = self._rows(set_id, labels, filenames, embeddings, created)
        with self._connect() as db:
            db.execute(
                "INSERT INTO support_sets (id, name, model_sha256, embedding_dim, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (set_id, name, model_sha256, int(embeddings.shape[1]), created, created),
            )
            db.executemany(
                "INSERT INTO support_embeddings (set_id, label, filename, embedding, created) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            return self._info(db, set_id)

    def check_usable(self, set_id: str, model_sha256: str) -> SupportSetInfo:
        """The set's description if it exists and belongs to this model. Raises like :meth:`load`."""
        info = self.get(set_id)
        self._check_model(info, model_sha256)
        return info

    def add(
        self,
        set_id: str,
        model_sha256: str,
        labels: Sequence[str],
        embeddings: np.ndarray,
        filenames: Sequence[str],
    ) -> SupportSetInfo:
        """Append images' embeddings to a set of this model. Raises ``SupportSetNotFound``, ``ModelMismatch``."""
        now = _now()
        rows = self._rows(set_id, labels, filenames, embeddings, now)
        with self._connect() as db:
            self._check_model(self._info(db, set_id), model_sha256)
            db.executemany(
                "INSERT INTO support_embeddings (set_id, label, filename, embedding, created) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("UPDATE support_sets SET updated = ? WHERE id = ?", (now, set_id))
            return self._info(db, set_id)

    def delete(self, set_id: str) -> None:
        """Remove a set and its embeddings (any model's). Raises ``SupportSetNotFound``."""
        with self._connect() as db:
            self._info(db, set_id)
            db.execute("DELETE FROM support_sets WHERE id = ?", (set_id,))
