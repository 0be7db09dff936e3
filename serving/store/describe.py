"""A set's description in three aggregate queries: the sets, image counts per label, and per set how
many images the asked model has an embedding of, can re-embed (kept images) or can never use."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Connection, Join, and_, case, func, select, true

from serving.store.records import SupportSetInfo
from serving.store.schema import support_embeddings, support_items, support_sets


def items_with_embeddings_of(model_sha256: str) -> Join:
    """``support_items`` LEFT JOIN that model's ``support_embeddings``: ``embedding`` is NULL where it has none."""
    emb = support_embeddings.c
    return support_items.outerjoin(
        support_embeddings, and_(emb.item_id == support_items.c.id, emb.model_sha256 == model_sha256)
    )


def describe(conn: Connection, model_sha256: str, set_id: str | None = None) -> list[SupportSetInfo]:
    """Every set (or the one ``set_id``; none when it does not exist), as seen by ``model_sha256``, oldest
    first: three aggregate queries, to be run inside one read transaction (one snapshot)."""
    sets = support_sets.c
    items = support_items.c
    emb = support_embeddings.c
    query = select(support_sets).order_by(sets.created, sets.id)
    rows = conn.execute(query if set_id is None else query.where(sets.id == set_id)).all()
    if not rows:
        return []
    of_set = true() if set_id is None else items.set_id == set_id
    classes: dict[str, dict[str, int]] = defaultdict(dict)
    for sid, label, n in conn.execute(
        select(items.set_id, items.label, func.count())
        .where(of_set)
        .group_by(items.set_id, items.label)
        .order_by(items.set_id, func.min(items.id))
    ):
        classes[sid][label] = n
    lost = case((and_(emb.item_id.is_(None), items.image_sha256.is_(None)), 1), else_=0)
    counts = {
        sid: (n, kept, embedded, unusable)
        for sid, n, kept, embedded, unusable in conn.execute(
            select(
                items.set_id,
                func.count(),
                func.count(items.image_sha256),
                func.count(emb.item_id),
                func.sum(lost),
            )
            .select_from(items_with_embeddings_of(model_sha256))
            .where(of_set)
            .group_by(items.set_id)
        )
    }
    out = []
    for row in rows:
        n, kept, embedded, unusable = counts.get(row.id, (0, 0, 0, 0))
        out.append(
            SupportSetInfo(
                id=row.id,
                name=row.name,
                model_sha256=row.model_sha256,
                embedding_dim=row.embedding_dim,
                num_images=int(n),
                classes=classes[row.id],
                created=row.created,
                updated=row.updated,
                kept_images=int(kept),
                embedded=int(embedded),
                unusable=int(unusable or 0),
            )
        )
    return out
