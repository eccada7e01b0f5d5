"""Routing: the event model and the one router both paths feed.

:mod:`.events` (pure) parses WebSocket frames and SQS bodies into events or
rejections with a reason, and says what an event does to each of its records;
:mod:`.positions` (pure) orders changes in time; :mod:`.merge` (pure) is the
newest-wins rule per field; :mod:`.orgs` is the org allow-list; :mod:`.router`
filters, traces, logs and hands batches off; :mod:`.handoff` holds the router's
seams (the durable hand-off and the dead letters it hands to) and their vocabulary.

May import: errors, policy, config, telemetry. The coordination implements the
router's seams from above; nothing here imports it.
"""
