"""Where events come from: the Passport WebSocket (primary) and SQS (safety net).

:mod:`.websocket` drives Passport Stream Protocol v1 connections (credits,
heartbeat watchdog, resume from the durable cursor), deciding what follows a
connection's end in :mod:`.passport` (pure); :mod:`.sqs` long-polls the queues,
deletes only what was handed off, extends visibility and releases on shutdown.
Both parse with :mod:`amt_ingest.routing.events` and hand off through the router.

May import: routing, coordination (cursors, resync jobs), telemetry, aws,
config, policy, errors.
"""
