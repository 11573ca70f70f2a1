-- Version 3: counts of tasks per state and type, kept by a trigger, so that `status` reads a
-- few rows however long the history (as the embedded store has done since version 1).
--
-- Each count is split in shards, one picked by the server process that writes it: workers on
-- many machines move tasks between states at once, and a single row per count would make their
-- transactions wait for each other at that row. A count is the sum of its shards.

CREATE TABLE counts (
    status TEXT NOT NULL,
    type TEXT NOT NULL,
    shard INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (status, type, shard)
);

CREATE FUNCTION count_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard INTEGER := pg_backend_pid() % 16;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.status = NEW.status AND OLD.type = NEW.type THEN
            RETURN NULL;
        END IF;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO host.counts AS c (status, type, shard, n)
            VALUES (OLD.status, OLD.type, my_shard, -1)
            ON CONFLICT (status, type, shard) DO UPDATE SET n = c.n - 1;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO host.counts AS c (status, type, shard, n)
            VALUES (NEW.status, NEW.type, my_shard, 1)
            ON CONFLICT (status, type, shard) DO UPDATE SET n = c.n + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_counted AFTER INSERT OR DELETE OR UPDATE OF status, type ON tasks
    FOR EACH ROW EXECUTE FUNCTION count_tasks();

INSERT INTO counts (status, type, shard, n)
    SELECT status, type, 0, count(*) FROM tasks GROUP BY status, type;
