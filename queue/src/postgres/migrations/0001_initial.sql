-- The PostgreSQL queue's schema, version 1, in the `host` schema of the database.
--
-- As in the embedded store, a task's whole record is `body` (its JSON); the other columns repeat
-- the fields that claims, listings and retention select and sort on. Times are milliseconds
-- since 1970-01-01 UTC. Task counts are counted, not kept in a table: a row of counts would be
-- one lock that every claim and finish on every machine waits for.

CREATE TABLE tasks (
    id BIGINT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'blocked', 'running', 'completed', 'failed', 'cancelled')),
    priority INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    retry_at BIGINT,
    lease_expires_at BIGINT,
    -- The secret of the running attempt's lease; never part of `body`.
    lease_token TEXT,
    worker TEXT,
    body TEXT NOT NULL
);

-- The id the next added task gets. A row, not a sequence: an add that fails gives its ids
-- back (as in the embedded store), and one that commits takes them for good, even after a purge.
CREATE TABLE next_task_id (id BIGINT NOT NULL);
INSERT INTO next_task_id (id) VALUES (1);

-- Claims: the best pending task of some types, by priority then age.
CREATE INDEX tasks_claimable ON tasks (type, priority, id) WHERE status = 'pending';
-- The lease scan, and per-type limits.
CREATE INDEX tasks_running ON tasks (lease_expires_at, type) WHERE status = 'running';
-- Listings by state, and counts.
CREATE INDEX tasks_by_status ON tasks (status, type, id);
-- Retention and "finished since".
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;

-- `after`: task_id comes after after_id.
CREATE TABLE task_after (
    task_id BIGINT NOT NULL,
    after_id BIGINT NOT NULL,
    PRIMARY KEY (task_id, after_id)
);
CREATE INDEX task_after_dependents ON task_after (after_id, task_id);

-- What `host pause` stopped: kind 'queue' (name ''), 'type' (a task type) or 'task' (an id).
CREATE TABLE pauses (
    kind TEXT NOT NULL CHECK (kind IN ('queue', 'type', 'task')),
    name TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);

-- What each worker, on every machine, publishes about itself (its JSON record).
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL
);

-- Task logs, in chunks; `start` is the chunk's byte offset in the task's log.
CREATE TABLE task_logs (
    task_id BIGINT NOT NULL,
    start BIGINT NOT NULL,
    chunk TEXT NOT NULL,
    PRIMARY KEY (task_id, start)
);

-- Queue-wide settings: 'durability' ('durable' or 'relaxed') and 'host.toml' (the
-- configuration every machine reads).
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO settings (key, value) VALUES ('durability', 'durable');
