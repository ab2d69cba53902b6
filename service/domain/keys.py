"""Key rotation for the couples' words: re-encrypt every stored token under the newest key.

With DATA_ENCRYPTION_KEY=new,old both keys read; new writes use the new key. `closer keys rotate` then
rewrites existing rows, after which the old key can be removed from the setting.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import LargeBinary, Table, select, type_coerce, update
from sqlalchemy.orm import Session

from service.crypto import Cipher, EncryptedText
from service.db import Base


def encrypted_columns() -> Iterator[tuple[Table, str]]:
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, EncryptedText):
                yield table, column.name


def rotate_all(session: Session, cipher: Cipher, *, batch: int = 1000) -> int:
    """Re-encrypt every encrypted value under the cipher's newest key; returns how many were rewritten."""
    rewritten = 0
    for table, name in encrypted_columns():
        raw = type_coerce(table.c[name], LargeBinary)
        last_id = 0
        while True:
            rows = session.execute(
                select(table.c.id, raw).where(table.c.id > last_id, table.c[name].is_not(None))
                .order_by(table.c.id).limit(batch)
            ).all()
            if not rows:
                break
            for row_id, value in rows:
                session.execute(
                    update(table).where(table.c.id == row_id)
                    .values({name: type_coerce(cipher.rotate(bytes(value)), LargeBinary)})
                )
            rewritten += len(rows)
            last_id = rows[-1][0]
    return rewritten
