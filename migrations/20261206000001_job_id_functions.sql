-- Jobs are named by the app's own id, whatever its type (docs/adoption.md): the runner binds
-- every id as text and the database converts it with these functions. On a table this
-- project's first migration made, the id is a bigint; `outbound-runner adopt` creates the same
-- functions for an app's table with its own types (TEXT cuids, uuid, SERIAL), and records this
-- migration as applied. Later migrations never name the id's or the status's type.
--
-- Each is one SELECT expression, LANGUAGE sql, so the planner inlines it into the statement
-- and the primary key index serves `id = outbound_job_id($1)`. Total: text that is not an id
-- of this type gives NULL (matches nothing), never an error.
CREATE FUNCTION outbound_job_id(text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN $1 ~ '^-?[0-9]{1,18}$' THEN $1::bigint END $$;

-- An array of ids, for `id = ANY(outbound_job_ids($1))` and `id <> ALL(...)`: what is not an
-- id is left out (a NULL element would make `<> ALL` match nothing).
CREATE FUNCTION outbound_job_ids(text[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT array_remove(ARRAY(SELECT outbound_job_id(x) FROM unnest($1) AS x), NULL) $$;

-- A status as the status column's type (text here; the app's enum on an adopted table).
CREATE FUNCTION outbound_job_status(text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT $1 $$;

-- A new id for the runner's own inserts (`enqueue`): the app's table may have no default.
CREATE FUNCTION outbound_job_new_id() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT nextval(pg_get_serial_sequence('"OutboundJob"', 'id')) $$;

-- `jobs list` and the admin API page by ("createdAt", id), newest first: ids are not in time
-- order (a cuid, a uuid). Its index, "OutboundJob_createdAt_id_idx", and every later index on
-- "OutboundJob" are not made here: `migrate` builds them after the migrations with CREATE INDEX
-- CONCURRENTLY (src/db/adopt.rs, INDEXES), so the app's inserts go on while a big table is
-- indexed; a plain CREATE INDEX here would hold them for the whole build.
