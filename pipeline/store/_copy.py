"""`newsletter db copy`: a SQLite store's history moved into an empty PostgreSQL one, counts verified."""

from __future__ import annotations

from pipeline.errors import StoreError
from pipeline.store._types import Store

# Parents before children, so that every foreign key finds its row.
ORDER = ("sends", "batches", "deliveries", "suppressions", "events", "delivery_status", "webhook_rejects")


def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Copy every row, ids kept; refuse a target that already holds sends, deliveries, suppressions or events
    (a second copy would mix two histories). Returns the rows per table, equal on both sides."""
    held = {t: n for t, n in target.table_counts().items() if n}
    if held:
        raise StoreError(f"{target.where} already holds data ({', '.join(f'{n} {t}' for t, n in held.items())}); "
                         "nothing was copied — copy into a new, empty database (after `newsletter db migrate`)")
    for table in ORDER:
        for columns, rows in source.dump(table):
            target.load(table, columns, rows)
    before, after = source.table_counts(), target.table_counts()
    if before != after:
        raise StoreError(f"the copy does not match: {before} in {source.where}, {after} in {target.where} — "
                         "drop the target database and run the copy again")
    return after
