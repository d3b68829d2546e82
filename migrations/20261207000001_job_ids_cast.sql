-- The runner's own id lists (the jobs it holds, the ids it read from the table) as the id
-- column's array type, for `id = ANY(outbound_job_ids_cast($1))` and `id <> ALL(...)` in the
-- statements it runs for every claim, prepare, mark and completion.
--
-- `outbound_job_ids(text[])` is total (an element that is not an id is left out: what an
-- operator types), but its body needs a subquery, so PostgreSQL cannot inline it: each
-- statement that calls it sets up and plans the function's own query again (about 0.1 ms, a
-- fifth of a completion's time at 80 messages/s). This one is a plain cast, which the planner
-- inlines; an element that is not an id is an error, never dropped. Only ids the runner read
-- from the table are passed to it. STABLE, not IMMUTABLE: the planner evaluates an IMMUTABLE
-- function of a bound value by calling it (setting up its query as above); a STABLE one it
-- inlines, and the cast is then folded on its own.
--
-- The id's type is the one `outbound_job_id(text)` returns: our bigint, or the app's type on
-- an adopted table (`outbound-runner adopt` creates the function itself with the same body).
DO $$
DECLARE
    ty text := pg_get_function_result('outbound_job_id(text)'::regprocedure);
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION outbound_job_ids_cast(text[]) RETURNS %s[]
             LANGUAGE sql STABLE PARALLEL SAFE
             AS $f$ SELECT $1::%s[] $f$',
        ty, ty);
END
$$;
