-- The embedded queue's schema, version 1.
--
-- A task's whole record is `body` (the task's JSON, as `host show --json` prints it); the other
-- columns repeat the fields that claims, listings and retention select and sort on, written
-- together with `body` in every update. Times are milliseconds since 1970-01-01 UTC.

CREATE TABLE tasks (
    -- AUTOINCREMENT: an id is never given out twice, even after the task was purged.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'blocked', 'running', 'completed', 'failed', 'cancelled')),
    priority INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    -- A pending task that failed retryably is not claimed before this time.
    retry_at INTEGER,
    -- A running task's lease ends at this time unless renewed.
    lease_expires_at INTEGER,
    -- The secret of the running attempt's lease: only its holder may renew or finish it. Never
    -- part of `body`.
    lease_token TEXT,
    worker TEXT,
    body TEXT NOT NULL
);

-- Claims: the best pending task of a type, by priority then age.
CREATE INDEX tasks_claimable ON tasks (type, priority, id) WHERE status = 'pending';
-- The lease scan: running tasks whose lease ran out.
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE status = 'running';
-- Listings by state, newest or oldest first.
CREATE INDEX tasks_by_status ON tasks (status, id);
-- Retention and "finished since".
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;

-- `after`: task_id comes after after_id.
CREATE TABLE task_after (
    task_id INTEGER NOT NULL,
    after_id INTEGER NOT NULL,
    PRIMARY KEY (task_id, after_id)
) WITHOUT ROWID;
CREATE INDEX task_after_dependents ON task_after (after_id, task_id);

-- What `host pause` stopped: kind 'queue' (name ''), 'type' (a task type) or 'task' (an id).
CREATE TABLE pauses (
    kind TEXT NOT NULL CHECK (kind IN ('queue', 'type', 'task')),
    name TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

-- Tasks per state and type, kept by the triggers below, so that `status` reads a few rows
-- however long the history.
CREATE TABLE counts (
    status TEXT NOT NULL,
    type TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (status, type)
) WITHOUT ROWID;

CREATE TRIGGER tasks_counted_in AFTER INSERT ON tasks BEGIN
    INSERT INTO counts (status, type, n) VALUES (new.status, new.type, 1)
        ON CONFLICT (status, type) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER tasks_counted_out AFTER DELETE ON tasks BEGIN
    UPDATE counts SET n = n - 1 WHERE status = old.status AND type = old.type;
END;

CREATE TRIGGER tasks_counted_moved AFTER UPDATE OF status, type ON tasks
    WHEN old.status <> new.status OR old.type <> new.type
BEGIN
    UPDATE counts SET n = n - 1 WHERE status = old.status AND type = old.type;
    INSERT INTO counts (status, type, n) VALUES (new.status, new.type, 1)
        ON CONFLICT (status, type) DO UPDATE SET n = n + 1;
END;

-- What each worker publishes about itself (its JSON record).
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL
);

-- Queue-wide settings: `durability` ('durable' or 'relaxed').
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO settings (key, value) VALUES ('durability', 'durable');
