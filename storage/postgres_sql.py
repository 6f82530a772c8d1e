"""Every SQL statement the PostgreSQL store runs, each named after what it
does and commented with the invariant it keeps.

The tables live in the connection's current schema (the first one on its
``search_path``), so one database can hold several stores, one per schema.
Stream ids, command ids and projection names are ``text COLLATE "C"``: they
sort by code point, as the other stores sort them, whatever the database's
locale.
"""

from __future__ import annotations

__all__ = [
    "APPEND_ACKS",
    "APPEND_ACKS_TYPES",
    "APPEND_EVENTS",
    "APPEND_EVENTS_TYPES",
    "BEGIN",
    "COMMIT",
    "CONFIGURE_SESSION",
    "CREATE_GROUP_TABLES",
    "CREATE_SCHEMA",
    "DELETE_PARKED",
    "FIND_ACKS",
    "FIND_EVENT",
    "FORMAT",
    "GROUP_TABLES",
    "LISTEN",
    "LOCK_HEAD",
    "LOCK_SCHEMA",
    "NOTIFY_CHANNEL",
    "NOTIFY_COMMIT",
    "PUT_CHECKPOINT",
    "PUT_GROUP",
    "PUT_PARKED",
    "PUT_SNAPSHOTS",
    "READ_ACK",
    "READ_ALL",
    "READ_CATEGORY",
    "READ_CHECKPOINT",
    "READ_CHECKPOINT_NAMES",
    "READ_FORMAT",
    "READ_GROUP",
    "READ_GROUP_NAMES",
    "READ_HEAD",
    "READ_PARKED",
    "READ_SCHEMA",
    "READ_SNAPSHOT",
    "READ_STREAM",
    "READ_STREAMS",
    "READ_STREAM_LIMITED",
    "READ_STREAM_VERSION",
    "READ_STREAM_VERSIONS",
    "ROLLBACK",
    "SET_HEAD",
    "TABLES",
    "TABLES_PRESENT",
    "WRITE_FORMAT",
]

FORMAT = "motet-postgres/1"
"""The schema version this code reads and writes, recorded in ``motet_meta``."""

TABLES = (
    "motet_meta",
    "motet_head",
    "motet_events",
    "motet_commands",
    "motet_snapshots",
    "motet_checkpoints",
)
"""Our table names: a schema holding any of them without our format record is
someone else's, and is refused."""

GROUP_TABLES = ("motet_groups", "motet_parked")
"""The consumer groups' tables, created when a store opens (see
:data:`CREATE_GROUP_TABLES`), so a store made before them is not refused."""

NOTIFY_CHANNEL = "motet_commit"
"""The LISTEN/NOTIFY channel every append transaction notifies (payload: the new head)."""

# -- opening ------------------------------------------------------------------

# Every connection: synchronous_commit from the durability ("on": a commit is
# flushed before it is answered); lock_timeout bounds the wait for another
# process's head lock; idle_in_transaction_session_timeout makes the server
# end a session that stalls inside a transaction, so its head lock is freed.
CONFIGURE_SESSION = """
SELECT set_config('synchronous_commit', %s, false),
       set_config('lock_timeout', %s, false),
       set_config('idle_in_transaction_session_timeout', %s, false)
"""

# The schema our tables live in: the first existing one on the search_path.
READ_SCHEMA = "SELECT current_schema()"

# Two processes opening an empty schema at once must not both create it: the
# transaction-scoped advisory lock serializes opening (released at COMMIT).
LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtext('motet-store:' || current_schema()))"

# Which of our table names already exist in the current schema (ours or foreign).
TABLES_PRESENT = """
SELECT c.relname::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = ANY(%s)
"""

READ_FORMAT = "SELECT value FROM motet_meta WHERE key = 'format'"

# Created in one transaction with the format record, so a schema either holds
# a complete store or nothing of ours.
CREATE_SCHEMA = [
    """
    CREATE TABLE motet_meta (
        key text COLLATE "C" PRIMARY KEY,
        value text NOT NULL
    )
    """,
    # One row, locked FOR UPDATE by every append transaction: appends run one
    # at a time, so positions are gap-free and in commit order (a sequence
    # would leave holes on rollback and let a reader pass an event that
    # commits later).
    """
    CREATE TABLE motet_head (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        position bigint NOT NULL CHECK (position >= 0)
    )
    """,
    "INSERT INTO motet_head (position) VALUES (0)",
    # envelope: the msgpack StoredEvent record, the same bytes as the LMDB
    # store's log value. UNIQUE (stream, version) makes a second writer that
    # somehow skipped the head lock fail instead of forking a stream.
    """
    CREATE TABLE motet_events (
        position bigint PRIMARY KEY CHECK (position > 0),
        stream text COLLATE "C" NOT NULL,
        version bigint NOT NULL CHECK (version > 0),
        envelope bytea NOT NULL,
        UNIQUE (stream, version)
    )
    """,
    # The Ack each command id was given (written in the append's transaction).
    """
    CREATE TABLE motet_commands (
        command_id text COLLATE "C" PRIMARY KEY,
        stream text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        position bigint NOT NULL
    )
    """,
    """
    CREATE TABLE motet_snapshots (
        stream text COLLATE "C" PRIMARY KEY,
        version bigint NOT NULL,
        schema_version integer NOT NULL,
        state bytea NOT NULL
    )
    """,
    """
    CREATE TABLE motet_checkpoints (
        name text COLLATE "C" PRIMARY KEY,
        position bigint NOT NULL,
        schema_version integer NOT NULL,
        model bytea
    )
    """,
]

WRITE_FORMAT = "INSERT INTO motet_meta (key, value) VALUES ('format', %s)"

# -- one append transaction (each step its own statement) ----------------------

# Sent unprepared (prepare=False): there is nothing to plan, and COMMIT stays
# visible as itself on the wire and in pg_stat_activity.
BEGIN = "BEGIN"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

# Takes the head row lock and reads the head. It must be a statement of its
# own: in READ COMMITTED each statement takes a new snapshot, so the statements
# after it see everything committed by the writer that held the lock before
# us, whereas a statement that locked and read max(position) at once would
# read a snapshot from before the lock (duplicate positions).
LOCK_HEAD = "SELECT position FROM motet_head FOR UPDATE"

# Acks already recorded for the batch's command ids (another process may have
# committed the same command): checked under the head lock, so no command id
# is committed twice.
FIND_ACKS = """
SELECT command_id, stream, version, position FROM motet_commands WHERE command_id = ANY(%s)
"""

# The committed version of each stream the batch touches, read under the head
# lock (one index probe per stream, newest version first).
READ_STREAM_VERSIONS = """
SELECT s.stream, (
    SELECT e.version FROM motet_events e
    WHERE e.stream = s.stream ORDER BY e.version DESC LIMIT 1
)
FROM unnest(%s::text[]) AS s(stream)
"""

# The batch's events in one statement (never a loop of INSERTs): binary COPY,
# measured at twice the rate of INSERT ... SELECT FROM unnest(...).
APPEND_EVENTS = "COPY motet_events (position, stream, version, envelope) FROM STDIN (FORMAT BINARY)"
APPEND_EVENTS_TYPES = ("int8", "text", "int8", "bytea")

# The Acks of the batch's command ids, in the same transaction as the events:
# an Ack is recorded if and only if its events are.
APPEND_ACKS = (
    "COPY motet_commands (command_id, stream, version, position) FROM STDIN (FORMAT BINARY)"
)
APPEND_ACKS_TYPES = ("text", "text", "int8", "int8")

# The batch's snapshots (at most one per stream: ON CONFLICT cannot touch a row
# twice in one statement), replacing earlier ones.
PUT_SNAPSHOTS = """
INSERT INTO motet_snapshots (stream, version, schema_version, state)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::integer[], %s::bytea[])
ON CONFLICT (stream) DO UPDATE
SET version = EXCLUDED.version, schema_version = EXCLUDED.schema_version, state = EXCLUDED.state
"""

# Moves the head, still under the lock taken by LOCK_HEAD.
SET_HEAD = "UPDATE motet_head SET position = %s"

# Delivered at COMMIT only (and never for a rolled-back batch): wakes the
# processes that wait for new events.
NOTIFY_COMMIT = f"SELECT pg_notify('{NOTIFY_CHANNEL}', %s)"

# After a connection was lost during COMMIT: the batch committed if and only if
# its first planned event is in the log with exactly the planned bytes.
FIND_EVENT = "SELECT envelope FROM motet_events WHERE position = %s"

# -- reads (no lock: each statement reads committed rows only) ----------------

# The last committed head: everything at or below it is readable.
READ_HEAD = "SELECT position FROM motet_head"

# Catch-up: gap-free positions mean a reader that follows the last position it
# saw never skips an event (appends commit in position order).
READ_ALL = "SELECT envelope FROM motet_events WHERE position > %s ORDER BY position LIMIT %s"

READ_STREAM = """
SELECT envelope FROM motet_events WHERE stream = %s AND version > %s ORDER BY version
"""

READ_STREAM_LIMITED = """
SELECT envelope FROM motet_events WHERE stream = %s AND version > %s ORDER BY version LIMIT %s
"""

READ_STREAM_VERSION = """
SELECT version FROM motet_events WHERE stream = %s ORDER BY version DESC LIMIT 1
"""

READ_STREAMS = "SELECT stream, max(version) FROM motet_events GROUP BY stream ORDER BY stream"

READ_SNAPSHOT = "SELECT version, schema_version, state FROM motet_snapshots WHERE stream = %s"

READ_ACK = "SELECT stream, version, position FROM motet_commands WHERE command_id = %s"

READ_CHECKPOINT = "SELECT position, schema_version, model FROM motet_checkpoints WHERE name = %s"

READ_CHECKPOINT_NAMES = "SELECT name FROM motet_checkpoints ORDER BY name"

# One statement: a checkpoint is replaced whole, never half-written.
PUT_CHECKPOINT = """
INSERT INTO motet_checkpoints (name, position, schema_version, model) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE
SET position = EXCLUDED.position, schema_version = EXCLUDED.schema_version, model = EXCLUDED.model
"""

LISTEN = f"LISTEN {NOTIFY_CHANNEL}"

# -- consumer groups --------------------------------------------------------------

# Created when a store is opened (IF NOT EXISTS): stores made before consumer
# groups existed gain them without a format change. A group's progress is one
# row replaced whole, so its buckets never disagree with one another.
CREATE_GROUP_TABLES = [
    # The category index: an expression index, so the append path is
    # unchanged (PostgreSQL maintains it in the append's transaction) and a
    # store made before it gains it when opened. split_part(stream, '-', 1)
    # is the stream's category, as streams.category_of reads it.
    """
    CREATE INDEX IF NOT EXISTS motet_events_by_category
    ON motet_events (split_part(stream, '-', 1), position)
    """,
    """
    CREATE TABLE IF NOT EXISTS motet_groups (
        name text COLLATE "C" PRIMARY KEY,
        progress bytea NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS motet_parked (
        name text COLLATE "C" NOT NULL,
        position bigint NOT NULL,
        parked bytea NOT NULL,
        PRIMARY KEY (name, position)
    )
    """,
]

# Served by motet_events_by_category: the same expression, then the position.
READ_CATEGORY = """
SELECT envelope FROM motet_events
WHERE split_part(stream, '-', 1) = %s AND position > %s
ORDER BY position LIMIT %s
"""

READ_GROUP = "SELECT progress FROM motet_groups WHERE name = %s"

# One statement: the progress is replaced whole, never half-written.
PUT_GROUP = """
INSERT INTO motet_groups (name, progress) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET progress = EXCLUDED.progress
"""

READ_GROUP_NAMES = """
SELECT name FROM motet_groups UNION SELECT name FROM motet_parked ORDER BY name
"""

PUT_PARKED = """
INSERT INTO motet_parked (name, position, parked) VALUES (%s, %s, %s)
ON CONFLICT (name, position) DO UPDATE SET parked = EXCLUDED.parked
"""

READ_PARKED = "SELECT parked FROM motet_parked WHERE name = %s ORDER BY position"

DELETE_PARKED = "DELETE FROM motet_parked WHERE name = %s AND position = %s"
