"""Support sets for few-shot classification, in SQLite or PostgreSQL (one interface, SQLAlchemy Core).

A set stores EMBEDDINGS per image and per model (the encoder's un-normalised float32 output,
identified by the sha256 of its ``encoder.onnx``), plus each image's label and file name, and the
image itself only when the caller passes it (``CLCE_KEEP_SUPPORT_IMAGES``). Embeddings of different
models are not comparable: a model can use a set when every image has its embedding or a kept image
to make one from (:meth:`SupportSetStore.load` returns those images; the caller embeds them and
saves the result with :meth:`SupportSetStore.save_embeddings`). Otherwise
:class:`~serving.errors.ModelMismatch` (409) says how to keep images.

Every method is ONE transaction (see :mod:`serving.store.database`): a listing or a load sees one
snapshot, so concurrent replicas never see half a set; a write on a set that another client deleted
raises :class:`~serving.errors.SupportSetNotFound` (404). The store may be used from many threads.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, exists, insert, select, update

from serving.errors import ModelMismatch, SupportSetNotFound
from serving.store.database import IMAGES_LOCK, Database
from serving.store.describe import describe, items_with_embeddings_of
from serving.store.errors import StoreError, StoreUnavailable
from serving.store.migrations import migrate
from serving.store.records import KeptImage, NewImages, SetEmbeddings, SupportSetInfo
from serving.store.schema import support_embeddings, support_images, support_items, support_sets

_DTYPE = np.dtype("<f4")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _not_found(set_id: str) -> SupportSetNotFound:
    return SupportSetNotFound(f"no support set with id {set_id!r}; GET /support-sets lists them")


def _embedding_rows(
    item_ids: Sequence[int], model_sha256: str, embeddings: np.ndarray
) -> list[dict[str, Any]]:
    """Rows of ``support_embeddings`` for ``(n, D)`` embeddings of items ``item_ids`` (n,)."""
    emb = np.ascontiguousarray(embeddings, dtype=_DTYPE)  # (n, D)
    return [
        {"item_id": item_id, "model_sha256": model_sha256, "embedding": emb[i].tobytes()}
        for i, item_id in enumerate(item_ids)
    ]


def _mismatch(info: SupportSetInfo, model_sha256: str) -> ModelMismatch:
    return ModelMismatch(
        f"support set {info.id!r} ({info.name!r}): {info.unusable} of its {info.num_images} images have no "
        f"embedding of this server's model {model_sha256[:12]}… (the set was created with model "
        f"{info.model_sha256[:12]}…) and were not kept; embeddings of different models are not comparable. "
        "Create the set again from its images with this model. To let sets survive model changes, run the "
        "server with CLCE_KEEP_SUPPORT_IMAGES=true: images are then kept in the database and re-embedded "
        "for a new model"
    )


class SupportSetStore:
    """Support sets in the database at ``url``, created or upgraded to the current schema on open.

    Args:
        url: ``sqlite:///path`` or ``postgresql://user:password@host:port/db``.

    Raises:
        StoreError: unsupported URL, unreachable database, or a schema from a newer server.
    """

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        try:
            self.found_version = migrate(self.db)
        except StoreUnavailable as e:
            raise StoreError(f"cannot open the support-set database {self.display}: {e.reason}") from None

    @property
    def display(self) -> str:
        """The database URL with its password hidden."""
        return self.db.display

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------- reads

    def _info(self, conn: Connection, set_id: str, model_sha256: str) -> SupportSetInfo:
        infos = describe(conn, model_sha256, set_id)
        if not infos:
            raise _not_found(set_id)
        return infos[0]

    def get(self, set_id: str, model_sha256: str) -> SupportSetInfo:
        """One set's description, as seen by ``model_sha256``. Raises ``SupportSetNotFound``."""
        with self.db.read() as conn:
            return self._info(conn, set_id, model_sha256)

    def list_sets(self, model_sha256: str) -> list[SupportSetInfo]:
        """Every set, oldest first, from one snapshot."""
        with self.db.read() as conn:
            return describe(conn, model_sha256)

    def check_usable(self, set_id: str, model_sha256: str) -> SupportSetInfo:
        """The set's description if it exists and ``model_sha256`` can use it.

        Raises:
            SupportSetNotFound, ModelMismatch.
        """
        info = self.get(set_id, model_sha256)
        if not info.usable:
            raise _mismatch(info, model_sha256)
        return info

    def load(self, set_id: str, model_sha256: str) -> SetEmbeddings:
        """A set's labels and this model's embeddings, with the kept images it has no embedding of yet.

        Raises:
            SupportSetNotFound, ModelMismatch.
        """
        items = support_items.c
        emb = support_embeddings.c
        with self.db.read() as conn:
            info = self._info(conn, set_id, model_sha256)
            if not info.usable:
                raise _mismatch(info, model_sha256)
            rows = conn.execute(
                select(items.id, items.label, items.filename, items.image_sha256, emb.embedding)
                .select_from(items_with_embeddings_of(model_sha256))
                .where(items.set_id == set_id)
                .order_by(items.id)
            ).all()
            wanted = {r.image_sha256 for r in rows if r.embedding is None}
            data = dict(
                conn.execute(
                    select(support_images.c.sha256, support_images.c.data).where(
                        support_images.c.sha256.in_(wanted)
                    )
                ).all()
                if wanted
                else []
            )
        return SetEmbeddings(
            info=info,
            labels=[r.label for r in rows],
            item_ids=[r.id for r in rows],
            embeddings=[None if r.embedding is None else np.frombuffer(r.embedding, _DTYPE) for r in rows],
            missing=[KeptImage(r.id, r.filename, data[r.image_sha256]) for r in rows if r.embedding is None],
        )

    # ------------------------------------------------------------------------------------ writes

    def _lock_set(self, conn: Connection, set_id: str) -> None:
        """Lock the set's row until the transaction ends (PostgreSQL; SQLite writes are serial)."""
        locked = conn.execute(
            select(support_sets.c.id).where(support_sets.c.id == set_id).with_for_update()
        ).first()
        if locked is None:
            raise _not_found(set_id)

    def _insert_items(
        self, conn: Connection, set_id: str, model_sha256: str, new: NewImages, now: str
    ) -> None:
        images = new.images
        n = len(new.labels)
        shas: list[str | None] = [None] * n
        if images is not None:
            shas = [hashlib.sha256(data).hexdigest() for data in images]
            self.db.lock(conn, IMAGES_LOCK)
            unique = {sha: data for sha, data in zip(shas, images, strict=True)}
            self.db.insert_new(
                conn, support_images, [{"sha256": s, "data": d, "created": now} for s, d in unique.items()]
            )
        item_ids = (
            conn.execute(
                insert(support_items).returning(support_items.c.id, sort_by_parameter_order=True),
                [
                    {"set_id": set_id, "label": label, "filename": name, "image_sha256": sha, "created": now}
                    for label, name, sha in zip(new.labels, new.filenames, shas, strict=True)
                ],
            )
            .scalars()
            .all()
        )
        conn.execute(insert(support_embeddings), _embedding_rows(item_ids, model_sha256, new.embeddings))

    def create(self, name: str, model_sha256: str, new: NewImages) -> SupportSetInfo:
        """Store a new set named ``name`` (free text) of images embedded by ``model_sha256``."""
        set_id = uuid.uuid4().hex
        now = _now()
        with self.db.write() as conn:
            conn.execute(
                insert(support_sets).values(
                    id=set_id,
                    name=name,
                    model_sha256=model_sha256,
                    embedding_dim=int(new.embeddings.shape[1]),
                    created=now,
                    updated=now,
                )
            )
            self._insert_items(conn, set_id, model_sha256, new, now)
            return self._info(conn, set_id, model_sha256)

    def add(self, set_id: str, model_sha256: str, new: NewImages) -> SupportSetInfo:
        """Append images embedded by ``model_sha256`` to a set that model can use.

        Raises:
            SupportSetNotFound: also when the set is deleted while this runs.
            ModelMismatch: the model cannot use the set's other images.
        """
        now = _now()
        with self.db.write() as conn:
            self._lock_set(conn, set_id)
            info = self._info(conn, set_id, model_sha256)
            if not info.usable:
                raise _mismatch(info, model_sha256)
            self._insert_items(conn, set_id, model_sha256, new, now)
            conn.execute(update(support_sets).where(support_sets.c.id == set_id).values(updated=now))
            return self._info(conn, set_id, model_sha256)

    def save_embeddings(
        self, set_id: str, model_sha256: str, item_ids: Sequence[int], embeddings: np.ndarray
    ) -> None:
        """Record this model's embeddings of kept images (from :meth:`load`'s ``missing``).

        Another replica may have saved the same ones meanwhile; the first write wins (they are equal).

        Args:
            item_ids: ``(n,)`` the images' ``KeptImage.item_id``.
            embeddings: ``(n, D)`` their un-normalised embeddings.

        Raises:
            SupportSetNotFound: the set was deleted meanwhile.
        """
        with self.db.write() as conn:
            self._lock_set(conn, set_id)
            self.db.insert_new(conn, support_embeddings, _embedding_rows(item_ids, model_sha256, embeddings))

    def delete(self, set_id: str) -> None:
        """Remove a set, its embeddings (every model's) and the kept images no other set uses.

        Raises:
            SupportSetNotFound: no such set (also when another client deleted it first).
        """
        items = support_items.c
        with self.db.write() as conn:
            self._lock_set(conn, set_id)  # no image can join the set from here on
            shas = (
                conn.execute(
                    select(items.image_sha256)
                    .where(items.set_id == set_id, items.image_sha256.is_not(None))
                    .distinct()
                )
                .scalars()
                .all()
            )
            conn.execute(delete(support_sets).where(support_sets.c.id == set_id))
            if shas:
                self.db.lock(conn, IMAGES_LOCK)
                conn.execute(
                    delete(support_images).where(
                        support_images.c.sha256.in_(shas),
                        ~exists().where(items.image_sha256 == support_images.c.sha256),
                    )
                )
