"""Operations: what operators and orchestrators see and do beside the data path.

:mod:`.deadletters` (every dead-letter place: the sink for rejected input and
the ``dlq`` command), :mod:`.status` (the ``status`` view), :mod:`.health`
(``/healthz``, ``/readyz``, ``/metrics``), :mod:`.watch` (queue depths and
WebSocket state, periodically).

May import: everything below it (sources, jobs, salesforce, coordination,
store, routing, telemetry, aws, config, policy, errors); only the service and
the CLI import it.
"""
