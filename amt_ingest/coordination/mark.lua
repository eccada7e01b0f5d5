-- Merge positioned changes that did not come from an event into a record's pending
-- changes (a resync's re-read marker, a tombstone from the deleted-records
-- resource, a reconciliation marker) and give the record a job if none owns it.
--
-- KEYS[1]    record key
-- ARGV[1]    org id (kept if the record has none)
-- ARGV[2]    arq queue name
-- ARGV[3]    arq job key ttl (ms)
-- ARGV[4]    arq function name
-- ARGV[5]    topic
-- ARGV[6]    record id
-- ARGV[7..]  triples: pending field name, position, JSON value
--
-- Returns the number of triples merged (0 when every one had a newer one pending).

return merge_pending(KEYS[1], ARGV, 7, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
