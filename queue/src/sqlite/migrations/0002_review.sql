-- Version 2: a task may wait for review (status 'review'), and a task whose branch conflicted
-- when merged carries a flag (`conflict`), so that `status` finds such tasks without reading
-- every task.
--
-- SQLite cannot change a CHECK constraint in place, so `tasks` is rebuilt as its documentation
-- describes (https://www.sqlite.org/lang_altertable.html#otheralter): ids, rows and the
-- AUTOINCREMENT counter are kept; the counts do not change (the triggers are dropped first and
-- made again on the new table).

DROP TRIGGER tasks_counted_in;
DROP TRIGGER tasks_counted_out;
DROP TRIGGER tasks_counted_moved;

CREATE TABLE tasks_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'blocked', 'running', 'review', 'completed', 'failed', 'cancelled')),
    priority INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    retry_at INTEGER,
    lease_expires_at INTEGER,
    lease_token TEXT,
    worker TEXT,
    body TEXT NOT NULL,
    -- 1 while a merge of the task's branch conflicted (its body's `branchState`).
    conflict INTEGER NOT NULL DEFAULT 0
);

INSERT INTO tasks_v2 (id, type, status, priority, created_at, finished_at, retry_at,
                      lease_expires_at, lease_token, worker, body)
    SELECT id, type, status, priority, created_at, finished_at, retry_at,
           lease_expires_at, lease_token, worker, body
    FROM tasks;

-- An id is never given out twice: the new table's counter starts where the old one stood.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'tasks_v2', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tasks_v2');
UPDATE sqlite_sequence
    SET seq = (SELECT max(seq) FROM sqlite_sequence WHERE name IN ('tasks', 'tasks_v2'))
    WHERE name = 'tasks_v2';

DROP TABLE tasks;
ALTER TABLE tasks_v2 RENAME TO tasks;

CREATE INDEX tasks_claimable ON tasks (type, priority, id) WHERE status = 'pending';
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
-- `status`'s list of tasks whose merge conflicted.
CREATE INDEX tasks_conflicts ON tasks (id) WHERE conflict = 1;

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
