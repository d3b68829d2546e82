-- Room on "OutboundMessage"'s pages for HOT updates (docs/benchmarks.md, "Issue 14").
--
-- A message row is updated up to four times after its insert: the `sending` mark before its
-- request leaves, then `sent` with its wamid, then Meta's `delivered` and `read`. The mark and the
-- statuses change no indexed column (status, "updatedAt", "deliveredAt", "readAt"), so PostgreSQL
-- can write them as heap-only tuples, with no new index entries, but only when the row's page has
-- room for the new version. With the default fillfactor (100) inserts fill every page, and each of
-- those updates goes to another page and into every index. New pages now keep 30 % free, as
-- "OutboundJob"'s do; existing pages are left as they are (no rewrite, no long lock).
ALTER TABLE "OutboundMessage" SET (fillfactor = 70);
