-- Version 2: a task may wait for review (status 'review'), and a task whose branch conflicted
-- when merged carries a flag (`conflict`), so that `status` finds such tasks without reading
-- every task.

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'blocked', 'running', 'review', 'completed', 'failed', 'cancelled'));

-- True while a merge of the task's branch conflicted (its body's `branchState`).
ALTER TABLE tasks ADD COLUMN conflict BOOLEAN NOT NULL DEFAULT false;
-- `status`'s list of tasks whose merge conflicted.
CREATE INDEX tasks_conflicts ON tasks (id) WHERE conflict;
