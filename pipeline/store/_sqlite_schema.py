"""The SQLite schema, as append-only migrations recorded in `schema_migrations` (PostgreSQL's is in _pg_schema).

Tables:

- ``sends``: one row per (issue, list, transport): content hash, subject, schedule, timestamps.
  ``transport`` is ``sendgrid`` for real mail and ``outbox`` for `.eml` files: the two never mix.
- ``batches``: one row per request: state, our ``request_id``, SendGrid's ``X-Message-Id``, HTTP status,
  error, attempts, the id range of its deliveries, timestamps; ``deferred`` when it holds its deliveries by
  that range and their rows are still untouched (see _sqlite_state: read states through delivery_log).
- ``deliveries``: one row per (send, recipient): state, batch (whose row has the message id and the
  times of the request), the time of other changes (suppressed, removed), and the recipient's name and
  merge fields as they were when the send started (a resume sends the same).
- ``delivery_log`` (a view): one row per recipient of a send with its state, request id, SendGrid's
  message id and the times of its request: what to query when asking "what happened to this address?".
- ``suppressions``: addresses never to mail again, whatever the list (unsubscribed, bounced, ...).
- ``events``: every event we were told about, once (``event_key`` is content-based). Events we could not
  apply (unknown type, unknown send, missing fields) are kept too, with their ``status``.
- ``delivery_status``: per delivery that has heard back, the furthest outcome (processed < deferred <
  delivered < bounce/dropped); the ``deliveries.state`` column belongs to the send and is never touched.
- ``webhook_rejects``: signed posts whose body was not an event array, kept once per distinct body.
- ``readmitted``: erased readers readmitted since (`newsletter subscribers readmit`), by the same marker.
- ``erased``: readers erased on request (`newsletter subscribers erase`), as the SHA-256 of the lower-cased
  address (`erased_marker`), never the address: a list row or an event of that address is known by it.
"""

Migration = tuple[str, str]  # (globally unique name, SQL script)

MIGRATIONS: list[Migration] = [
    ("sendlog_001_initial", """
        CREATE TABLE sends (
            id INTEGER PRIMARY KEY,
            issue TEXT NOT NULL,
            list TEXT NOT NULL,
            transport TEXT NOT NULL CHECK (transport IN ('sendgrid', 'outbox')),
            content_hash TEXT NOT NULL,
            subject TEXT NOT NULL,
            send_at TEXT,
            created_at TEXT NOT NULL,
            finished_at TEXT,
            UNIQUE (issue, list, transport)
        );
        CREATE TABLE batches (
            id INTEGER PRIMARY KEY,
            send_id INTEGER NOT NULL REFERENCES sends (id) ON DELETE CASCADE,
            request_id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL CHECK (state IN ('in_flight', 'waiting', 'accepted', 'in_doubt', 'failed')),
            size INTEGER NOT NULL,
            first_delivery INTEGER NOT NULL,
            last_delivery INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            http_status INTEGER,
            message_id TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            finished_at TEXT
        );
        CREATE INDEX batches_send ON batches (send_id, state);
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            send_id INTEGER NOT NULL REFERENCES sends (id) ON DELETE CASCADE,
            email TEXT NOT NULL COLLATE NOCASE,
            name TEXT NOT NULL DEFAULT '',
            fields TEXT,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN
                ('pending', 'in_flight', 'accepted', 'in_doubt', 'failed', 'suppressed', 'removed')),
            batch_id INTEGER REFERENCES batches (id),
            message_id TEXT,
            updated_at TEXT,
            UNIQUE (send_id, email)
        );
        CREATE TABLE suppressions (
            email TEXT PRIMARY KEY COLLATE NOCASE,
            reason TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
    """),
    ("sendlog_002_delivery_log", """
        CREATE VIEW delivery_log AS
        SELECT d.send_id, s.issue, s.list, d.id AS delivery_id, d.email, d.state, b.request_id, b.message_id,
               b.created_at AS requested_at, b.finished_at AS answered_at, d.updated_at
        FROM deliveries d JOIN sends s ON s.id = d.send_id LEFT JOIN batches b ON b.id = d.batch_id;
    """),
]

MIGRATIONS += [
    ("events_001_initial", """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_key TEXT NOT NULL UNIQUE,
            event TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('applied', 'unknown_type', 'unmatched', 'invalid')),
            source TEXT NOT NULL CHECK (source IN ('webhook', 'link')),
            email TEXT COLLATE NOCASE,
            send_id INTEGER,
            delivery_id INTEGER,
            issue TEXT,
            list TEXT,
            occurred_at INTEGER,
            url TEXT,
            payload TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE INDEX events_issue ON events (issue, list, event);
        CREATE INDEX events_delivery ON events (delivery_id);
        CREATE TABLE delivery_status (
            delivery_id INTEGER PRIMARY KEY,
            outcome TEXT NOT NULL,
            outcome_at INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE webhook_rejects (
            body_sha256 TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            body BLOB NOT NULL,
            received_at TEXT NOT NULL,
            times INTEGER NOT NULL DEFAULT 1
        );
    """),
]

# Editions: each delivery records the language of the edition its recipient gets (see pipeline.send.job).
# Rows recorded before editions existed hold '' and are the default edition's.
MIGRATIONS += [
    ("editions_001_delivery_edition", """
        ALTER TABLE deliveries ADD COLUMN edition TEXT NOT NULL DEFAULT '';
    """),
]

MIGRATIONS += [
    # Stopping a send (issue 12): the SendGrid batch id every request of the send carries, whether the
    # scheduled mail was paused or cancelled and when; an index that counts a send's new events cheaply.
    ("stop_001_batch_schedule", """
        ALTER TABLE sends ADD COLUMN batch_id TEXT;
        ALTER TABLE sends ADD COLUMN schedule_state TEXT CHECK (schedule_state IN ('paused', 'cancelled'));
        ALTER TABLE sends ADD COLUMN schedule_changed_at TEXT;
        CREATE INDEX events_progress ON events (issue, list, event, id);
    """),
]

MIGRATIONS += [
    # Deferred batches (see _sqlite_claims, _sqlite_state): a batch that holds its deliveries by id range, their
    # rows untouched until the batch is settled. delivery_log reads their state from the batch that holds them.
    ("claims_001_deferred_batches", """
        ALTER TABLE batches ADD COLUMN deferred INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX batches_deferred ON batches (send_id, first_delivery) WHERE deferred = 1;
        DROP VIEW delivery_log;
        CREATE VIEW delivery_log AS
        SELECT d.send_id, s.issue, s.list, d.id AS delivery_id, d.email,
               CASE WHEN r.id IS NULL THEN d.state WHEN r.state = 'waiting' THEN 'in_flight' ELSE r.state END
                   AS state,
               b.request_id, b.message_id, b.created_at AS requested_at, b.finished_at AS answered_at, d.updated_at
        FROM deliveries d JOIN sends s ON s.id = d.send_id
        LEFT JOIN batches r ON d.batch_id IS NULL AND d.state = 'pending' AND r.id = (
            SELECT c.id FROM batches c WHERE c.send_id = d.send_id AND c.deferred = 1 AND c.first_delivery <= d.id
            ORDER BY c.first_delivery DESC LIMIT 1) AND r.last_delivery >= d.id
        LEFT JOIN batches b ON b.id = coalesce(d.batch_id, r.id);
    """),
]

MIGRATIONS += [
    # Deferred batches of one edition's loop in a send of several: the editions it took rows of (a JSON list).
    ("claims_002_deferred_editions", """
        ALTER TABLE batches ADD COLUMN editions TEXT;
        DROP VIEW delivery_log;
        CREATE VIEW delivery_log AS
        SELECT d.send_id, s.issue, s.list, d.id AS delivery_id, d.email,
               CASE WHEN r.id IS NULL THEN d.state WHEN r.state = 'waiting' THEN 'in_flight' ELSE r.state END
                   AS state,
               b.request_id, b.message_id, b.created_at AS requested_at, b.finished_at AS answered_at, d.updated_at
        FROM deliveries d JOIN sends s ON s.id = d.send_id
        LEFT JOIN batches r ON d.batch_id IS NULL AND d.state = 'pending' AND r.id = (
            SELECT c.id FROM batches c WHERE c.send_id = d.send_id AND c.deferred = 1 AND c.first_delivery <= d.id
            AND (c.editions IS NULL OR d.edition IN (SELECT value FROM json_each(c.editions)))
            ORDER BY c.first_delivery DESC LIMIT 1) AND r.last_delivery >= d.id
        LEFT JOIN batches b ON b.id = coalesce(d.batch_id, r.id);
    """),
]

MIGRATIONS += [
    # The send_at each request carried (epoch seconds; NULL: sent at once). A send resumed with another --at
    # holds mail under two schedules; a cancel discards only what was still scheduled, and only that is sent
    # again (`reopen_cancelled`). Batches recorded before this carried their send's send_at.
    ("stop_002_batch_send_at", """
        ALTER TABLE batches ADD COLUMN send_at INTEGER;
        UPDATE batches SET send_at = (SELECT CAST(s.send_at AS INTEGER) FROM sends s WHERE s.id = batches.send_id);
    """),
]

MIGRATIONS += [
    # Erasure on request: the marker of each erased address (see pipeline.store._erasing).
    ("erase_001_erased", """
        CREATE TABLE erased (
            marker TEXT PRIMARY KEY,
            erased_at TEXT NOT NULL
        );
    """),
    # A reader readmitted after an erase (`subscribers readmit`): the marker moves here, so that sends created
    # before the readmission, which may have mailed the reader, still skip the address.
    ("erase_002_readmitted", """
        CREATE TABLE readmitted (
            marker TEXT PRIMARY KEY,
            erased_at TEXT NOT NULL,
            readmitted_at TEXT NOT NULL
        );
    """),
]
