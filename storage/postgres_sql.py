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
    "ADD_FINGERPRINT_COLUMNS",
    "ADD_REMOVED_RUNS",
    "APPEND_ACKS",
    "APPEND_ACKS_TYPES",
    "APPEND_EVENTS",
    "APPEND_EVENTS_TYPES",
    "BEGIN",
    "CLAIM_LEASES",
    "COMMAND_COLUMNS",
    "COMMIT",
    "CONFIGURE_SESSION",
    "CONFIRM_REPLICATED",
    "CREATE_GROUP_TABLES",
    "CREATE_KEYS",
    "CREATE_LATER_TABLES",
    "CREATE_PARTITIONS",
    "CREATE_SCHEMA",
    "DELETE_KEYS",
    "DELETE_PARKED",
    "DELETE_SNAPSHOT",
    "DELETE_STREAM_EVENTS",
    "DELETIONS_FORMAT",
    "FIND_ACKS",
    "FIND_EVENT",
    "FORMAT",
    "GROUP_TABLES",
    "HEARTBEAT_NODE",
    "LATER_TABLES",
    "LEAVE_NODE",
    "LISTEN",
    "LOCK_HEAD",
    "LOCK_SCHEMA",
    "MARK_DELETIONS_FORMAT",
    "NOTIFY_CHANNEL",
    "NOTIFY_COMMIT",
    "PARTITION_TABLES",
    "PUT_CHECKPOINT",
    "PUT_DELETION",
    "PUT_DELETIONS",
    "PUT_GROUP",
    "PUT_KEYS",
    "PUT_PARKED",
    "PUT_RECORDED_ACKS",
    "PUT_SNAPSHOTS",
    "READ_ACK",
    "READ_ALL",
    "READ_CATEGORY",
    "READ_CHECKPOINT",
    "READ_CHECKPOINT_NAMES",
    "READ_DELETION",
    "READ_DELETIONS_AFTER",
    "READ_FENCES",
    "READ_FORMAT",
    "READ_GROUP",
    "READ_GROUP_NAMES",
    "READ_HEAD",
    "READ_KEY",
    "READ_KEYS",
    "READ_LEASES",
    "READ_NODES",
    "READ_PARKED",
    "READ_PARTITIONS",
    "READ_RECORDED_VERSIONS",
    "READ_REMOVED_RUNS",
    "READ_SCHEMA",
    "READ_SNAPSHOT",
    "READ_STREAM",
    "READ_STREAMS",
    "READ_STREAM_LIMITED",
    "READ_STREAM_VERSION",
    "READ_STREAM_VERSIONS",
    "RELEASE_LEASES",
    "RENEW_LEASES",
    "ROLLBACK",
    "SET_HEAD",
    "TABLES",
    "TABLES_PRESENT",
    "UPGRADABLE_FORMAT",
    "UPGRADE_FORMAT",
    "WRITE_FORMAT",
    "WRITE_PARTITIONS",
]

FORMAT = "motet-postgres/2"
"""The schema version this code reads and writes, recorded in ``motet_meta``."""

UPGRADABLE_FORMAT = "motet-postgres/1"
"""The earlier format, upgraded in place on opening: /2 only adds the
partition and node tables."""

DELETIONS_FORMAT = "motet-postgres/3"
"""The schema version of a store with tombstones or removed events, written
by the first deletion: a version that does not know them would accept appends
to deleted streams, so it must refuse the store."""

TABLES = (
    "motet_meta",
    "motet_head",
    "motet_events",
    "motet_commands",
    "motet_snapshots",
    "motet_checkpoints",
    "motet_deletions",
    "motet_removed",
    "motet_partitions",
    "motet_nodes",
)
"""Our table names: a schema holding any of them without our format record is
someone else's, and is refused."""

LATER_TABLES = ("motet_deletions", "motet_removed")
"""Tables added after format ``/1`` was first written: a store without them
gets them when it is next opened (:data:`CREATE_LATER_TABLES`)."""

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
    # The Ack each command id was given (written in the append's transaction)
    # and the fingerprint of the command (type tag, digest): NULL for an
    # import, or for an Ack written before fingerprints were kept.
    """
    CREATE TABLE motet_commands (
        command_id text COLLATE "C" PRIMARY KEY,
        stream text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        position bigint NOT NULL,
        type text COLLATE "C",
        digest bytea
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

# Stream deletions and removed positions (see motet.storage.deletion). IF NOT
# EXISTS: run on every open, so a store made before them gets them.
CREATE_LATER_TABLES = [
    # One row per stream deleted or truncated; version keeps the stream's
    # version once its events are gone, so no version is handed out twice.
    """
    CREATE TABLE IF NOT EXISTS motet_deletions (
        stream text COLLATE "C" PRIMARY KEY,
        version bigint NOT NULL,
        deleted boolean NOT NULL,
        hard boolean NOT NULL,
        removed_through bigint NOT NULL,
        removed bigint NOT NULL,
        deleted_at double precision
    )
    """,
    # Runs of positions removed on purpose: a gap in motet_events is a
    # removal exactly when a run covers it.
    """
    CREATE TABLE IF NOT EXISTS motet_removed (
        first bigint PRIMARY KEY CHECK (first > 0),
        last bigint NOT NULL CHECK (last >= first)
    )
    """,
]

WRITE_FORMAT = "INSERT INTO motet_meta (key, value) VALUES ('format', %s)"

# The columns of motet_commands, to tell a store made before fingerprints
# (read before altering it: ALTER TABLE locks the table out even when it
# changes nothing).
COMMAND_COLUMNS = """
SELECT a.attname::text FROM pg_attribute a
WHERE a.attrelid = 'motet_commands'::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""

# A store made before fingerprints gains the columns, nullable, in place and
# without a format change: its Acks have no fingerprint (a retry of them is
# compared by stream only), and an older version that opens the store
# after this still works, writing Acks without one.
ADD_FINGERPRINT_COLUMNS = """
ALTER TABLE motet_commands
    ADD COLUMN IF NOT EXISTS type text COLLATE "C",
    ADD COLUMN IF NOT EXISTS digest bytea
"""

# Subject keys (motet.storage.keyring), apart from the events: deleting a row
# shreds the subject's personal data. Added after the first stores were made,
# so it is created (under the schema lock) by every opening, not by
# CREATE_SCHEMA, and is not one of TABLES that must all be present.
CREATE_KEYS = """
CREATE TABLE IF NOT EXISTS motet_keys (
    subject text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
)
"""

# The tables format /2 adds; created with the others in a new store, or by
# UPGRADE_SCHEMA in a /1 store.
PARTITION_TABLES = [
    # One row per partition, all made when the store is: a lease is a row
    # update, never an insert, so two claims of one partition serialize on
    # its row. ``epoch`` is bumped by every claim; appends check it (the
    # fence). expires_at is compared with the database's now() only, so the
    # nodes' clocks never matter.
    """
    CREATE TABLE motet_partitions (
        partition integer PRIMARY KEY CHECK (partition >= 0),
        owner text COLLATE "C",
        epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
        expires_at timestamptz
    )
    """,
    # Each node's heartbeat: a node is live while expires_at > now().
    """
    CREATE TABLE motet_nodes (
        node_id text COLLATE "C" PRIMARY KEY,
        address text NOT NULL,
        role text NOT NULL,
        expires_at timestamptz NOT NULL
    )
    """,
]

# The partition count is fixed when the store is created: every stream's
# partition is a function of it.
WRITE_PARTITIONS = "INSERT INTO motet_meta (key, value) VALUES ('partitions', %s::text)"
CREATE_PARTITIONS = (
    "INSERT INTO motet_partitions (partition) SELECT generate_series(0, %s::integer - 1)"
)

READ_PARTITIONS = "SELECT value FROM motet_meta WHERE key = 'partitions'"

UPGRADE_FORMAT = "UPDATE motet_meta SET value = %s WHERE key = 'format'"

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

# Acks already recorded for the batch's command ids, with their commands'
# fingerprints (another process may have committed the same command, or
# another one under the same id): checked under the head lock, so no command
# id is committed twice.
FIND_ACKS = """
SELECT command_id, stream, version, position, type, digest
FROM motet_commands WHERE command_id = ANY(%s)
"""

# The committed version of each stream the batch touches and whether it was
# deleted, read under the head lock (one index probe per stream, newest
# version first; a stream whose events were removed keeps its version in
# motet_deletions). Deleting takes the head lock too, so no append slips past
# a tombstone.
READ_STREAM_VERSIONS = """
SELECT s.stream, GREATEST((
    SELECT e.version FROM motet_events e
    WHERE e.stream = s.stream ORDER BY e.version DESC LIMIT 1
), d.version), coalesce(d.deleted, false)
FROM unnest(%s::text[]) AS s(stream) LEFT JOIN motet_deletions d ON d.stream = s.stream
"""

# An import's view of the streams its batch touches: the version to follow,
# counting the versions removed in the copied log (removed_through) as taken,
# read under the head lock after the batch's deletion records are written.
READ_RECORDED_VERSIONS = """
SELECT s.stream, GREATEST((
    SELECT e.version FROM motet_events e
    WHERE e.stream = s.stream ORDER BY e.version DESC LIMIT 1
), d.removed_through)
FROM unnest(%s::text[]) AS s(stream) LEFT JOIN motet_deletions d ON d.stream = s.stream
"""

# An import's deletion records, copied as they are in one statement (under
# the head lock, before its events).
PUT_DELETIONS = """
INSERT INTO motet_deletions
    (stream, version, deleted, hard, removed_through, removed, deleted_at)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::boolean[], %s::boolean[], %s::bigint[],
                     %s::bigint[], %s::double precision[])
ON CONFLICT (stream) DO UPDATE
SET version = EXCLUDED.version, deleted = EXCLUDED.deleted, hard = EXCLUDED.hard,
    removed_through = EXCLUDED.removed_through, removed = EXCLUDED.removed,
    deleted_at = EXCLUDED.deleted_at
"""

# The batch's events in one statement (never a loop of INSERTs): binary COPY,
# measured at twice the rate of INSERT ... SELECT FROM unnest(...).
APPEND_EVENTS = "COPY motet_events (position, stream, version, envelope) FROM STDIN (FORMAT BINARY)"
APPEND_EVENTS_TYPES = ("int8", "text", "int8", "bytea")

# The Acks of the batch's command ids with their commands' fingerprints, in
# the same transaction as the events: an Ack is recorded if and only if its
# events are.
APPEND_ACKS = (
    "COPY motet_commands (command_id, stream, version, position, type, digest) "
    "FROM STDIN (FORMAT BINARY)"
)
APPEND_ACKS_TYPES = ("text", "text", "int8", "int8", "text", "bytea")

# The batch's snapshots (at most one per stream: ON CONFLICT cannot touch a row
# twice in one statement), replacing earlier ones.
PUT_SNAPSHOTS = """
INSERT INTO motet_snapshots (stream, version, schema_version, state)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::integer[], %s::bytea[])
ON CONFLICT (stream) DO UPDATE
SET version = EXCLUDED.version, schema_version = EXCLUDED.schema_version, state = EXCLUDED.state
"""

# An import's Acks, in the same transaction as its events. A command whose
# events were split over two import batches had its Ack written by the first
# one, pointing at the event just before this batch: it moves to its last
# event, as an append's Ack is its last event (the Python side checked that).
PUT_RECORDED_ACKS = """
INSERT INTO motet_commands (command_id, stream, version, position)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])
ON CONFLICT (command_id) DO UPDATE
SET stream = EXCLUDED.stream, version = EXCLUDED.version, position = EXCLUDED.position
"""

# The batch's new keys, in the append's transaction: an event is committed if
# and only if the key that decrypts it is.
PUT_KEYS = """
INSERT INTO motet_keys (subject, record)
SELECT * FROM unnest(%s::text[], %s::bytea[])
ON CONFLICT (subject) DO UPDATE SET record = EXCLUDED.record
"""

# Forgetting: the key goes in the same transaction as the SubjectForgotten event.
DELETE_KEYS = "DELETE FROM motet_keys WHERE subject = ANY(%s::text[])"

# Moves the head, still under the lock taken by LOCK_HEAD.
SET_HEAD = "UPDATE motet_head SET position = %s"

# Delivered at COMMIT only (and never for a rolled-back batch): wakes the
# processes that wait for new events.
NOTIFY_COMMIT = f"SELECT pg_notify('{NOTIFY_CHANNEL}', %s)"

# After a connection was lost during COMMIT: the batch committed if and only if
# its first planned event is in the log with exactly the planned bytes.
FIND_EVENT = "SELECT envelope FROM motet_events WHERE position = %s"

# -- one deletion transaction (after LOCK_HEAD: one writer at a time) ---------

READ_DELETION = """
SELECT version, deleted, hard, removed_through, removed, deleted_at
FROM motet_deletions WHERE stream = %s
"""

# Removes a stream's events up to a version (all of them for a hard delete),
# returning their positions to record as removed runs.
DELETE_STREAM_EVENTS = """
DELETE FROM motet_events WHERE stream = %s AND version <= %s RETURNING position
"""

DELETE_SNAPSHOT = "DELETE FROM motet_snapshots WHERE stream = %s"

# In every deletion transaction: from the first one on, the store's format
# says it holds tombstones (a no-op once it does).
MARK_DELETIONS_FORMAT = """
UPDATE motet_meta SET value = %s WHERE key = 'format' AND value <> %s
"""

PUT_DELETION = """
INSERT INTO motet_deletions
    (stream, version, deleted, hard, removed_through, removed, deleted_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (stream) DO UPDATE
SET version = EXCLUDED.version, deleted = EXCLUDED.deleted, hard = EXCLUDED.hard,
    removed_through = EXCLUDED.removed_through, removed = EXCLUDED.removed,
    deleted_at = EXCLUDED.deleted_at
"""

# One statement for every run of the deletion (runs of different deletions
# are never merged here: READ_REMOVED_RUNS is merged by the reader).
ADD_REMOVED_RUNS = """
INSERT INTO motet_removed (first, last) SELECT * FROM unnest(%s::bigint[], %s::bigint[])
"""

# -- reads (no lock: each statement reads committed rows only) ----------------

# The last committed head: everything at or below it is readable.
READ_HEAD = "SELECT position FROM motet_head"

# Catch-up: appends commit in position order, so a reader that follows the
# last position it saw never skips an event; positions may jump where events
# were removed on purpose.
READ_ALL = """
SELECT position, envelope FROM motet_events WHERE position > %s ORDER BY position LIMIT %s
"""

READ_STREAM = """
SELECT envelope FROM motet_events WHERE stream = %s AND version > %s ORDER BY version
"""

READ_STREAM_LIMITED = """
SELECT envelope FROM motet_events WHERE stream = %s AND version > %s ORDER BY version LIMIT %s
"""

READ_STREAM_VERSION = """
SELECT GREATEST(
    (SELECT version FROM motet_events WHERE stream = %s ORDER BY version DESC LIMIT 1),
    (SELECT version FROM motet_deletions WHERE stream = %s)
)
"""

# Streams with events, and truncated ones whose events are all gone (a hard
# deleted stream has no events left, and is left out).
READ_STREAMS = """
SELECT stream, max(version) FROM (
    SELECT stream, max(version) AS version FROM motet_events GROUP BY stream
    UNION ALL
    SELECT stream, version FROM motet_deletions WHERE NOT hard
) AS v GROUP BY stream ORDER BY stream
"""

READ_REMOVED_RUNS = "SELECT first, last FROM motet_removed ORDER BY first"

# A page of deletion records in stream order (text COLLATE "C": UTF-8 byte
# order, as the other stores sort), for an export.
READ_DELETIONS_AFTER = """
SELECT stream, version, deleted, hard, removed_through, removed, deleted_at
FROM motet_deletions WHERE stream > %s ORDER BY stream LIMIT %s
"""

READ_SNAPSHOT = "SELECT version, schema_version, state FROM motet_snapshots WHERE stream = %s"

READ_KEY = "SELECT record FROM motet_keys WHERE subject = %s"

# The keys of many subjects in one round trip (a batch's new subjects, a page
# of events being decoded).
READ_KEYS = "SELECT subject, record FROM motet_keys WHERE subject = ANY(%s::text[])"

# A commit the synchronous standbys must confirm, made only to wait for
# them: they confirm the WAL in order, so once this is confirmed so is every
# commit before it (an Ack found in the index may come from a commit whose
# wait was cancelled). One statement, its own transaction: SET LOCAL of
# synchronous_commit (the readers' session has "local") lasts until its
# COMMIT. The row lock takes an xid and writes WAL, without which a COMMIT
# waits for no standby; FOR KEY SHARE blocks no append or deletion. No row,
# no wait, when the server names no synchronous standby.
CONFIRM_REPLICATED = """
SELECT set_config('synchronous_commit', 'on', true) FROM motet_meta
WHERE key = 'format' AND current_setting('synchronous_standby_names') <> ''
FOR KEY SHARE
"""

READ_ACK = """
SELECT stream, version, position, type, digest FROM motet_commands WHERE command_id = %s
"""

READ_CHECKPOINT = "SELECT position, schema_version, model FROM motet_checkpoints WHERE name = %s"

READ_CHECKPOINT_NAMES = "SELECT name FROM motet_checkpoints ORDER BY name"

# One statement: a checkpoint is replaced whole, never half-written.
PUT_CHECKPOINT = """
INSERT INTO motet_checkpoints (name, position, schema_version, model) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE
SET position = EXCLUDED.position, schema_version = EXCLUDED.schema_version, model = EXCLUDED.model
"""

LISTEN = f"LISTEN {NOTIFY_CHANNEL}"

# -- partitions, leases and nodes --------------------------------------------------

# The fence, read in the append transaction right after LOCK_HEAD: claims and
# releases take the head lock too, so no lease can change between this read
# and the COMMIT, and an append whose node's epoch is stale writes nothing.
READ_FENCES = "SELECT partition, owner, epoch FROM motet_partitions WHERE partition = ANY(%s)"

# A node's heartbeat (inserted on its first one).
HEARTBEAT_NODE = """
INSERT INTO motet_nodes (node_id, address, role, expires_at)
VALUES (%s, %s, %s, now() + %s * interval '1 second')
ON CONFLICT (node_id) DO UPDATE
SET address = EXCLUDED.address, role = EXCLUDED.role, expires_at = EXCLUDED.expires_at
"""

# Renews the leases the node holds at the epochs it holds them: a lease
# another node claimed meanwhile (a new epoch) is not renewed, and is missing
# from the rows returned, which is how the node learns it lost it.
RENEW_LEASES = """
UPDATE motet_partitions p SET expires_at = now() + %s * interval '1 second'
FROM unnest(%s::integer[], %s::bigint[]) AS h(partition, epoch)
WHERE p.partition = h.partition AND p.epoch = h.epoch AND p.owner = %s
RETURNING p.partition, p.epoch
"""

READ_NODES = """
SELECT node_id, address, role FROM motet_nodes WHERE expires_at > now() ORDER BY node_id
"""

READ_LEASES = """
SELECT partition, owner, epoch, coalesce(owner IS NOT NULL AND expires_at > now(), false),
       greatest(coalesce(extract(epoch FROM expires_at - now()), 0), 0)::float8
FROM motet_partitions ORDER BY partition
"""

# Run under the head lock (LOCK_HEAD first): a claim waits for the append
# transaction in flight, so the old owner's last batch is checked against
# the old epoch, and every later one against the new. Only free or expired
# leases are taken, and the claiming node's own (left by an earlier process
# with its id, or a claim whose answer was lost); each claim bumps the epoch.
CLAIM_LEASES = """
UPDATE motet_partitions SET owner = %(node)s, epoch = epoch + 1,
    expires_at = now() + %(ttl)s * interval '1 second'
WHERE partition = ANY(%(partitions)s)
    AND (owner IS NULL OR expires_at <= now() OR owner = %(node)s)
RETURNING partition, epoch
"""

# Run under the head lock, like claims; frees the leases the node still holds
# at its epochs (a lease taken over meanwhile is left to its new owner).
RELEASE_LEASES = """
UPDATE motet_partitions p SET owner = NULL, expires_at = NULL
FROM unnest(%s::integer[], %s::bigint[]) AS h(partition, epoch)
WHERE p.partition = h.partition AND p.epoch = h.epoch AND p.owner = %s
RETURNING p.partition
"""

LEAVE_NODE = "DELETE FROM motet_nodes WHERE node_id = %s"

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
