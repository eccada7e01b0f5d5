"""Dead letters, wherever they are: list, show, replay and purge them (``dlq`` command).

Three places hold dead letters:

- ``sqs``: the dead-letter queue of each configured source queue (found through
  its redrive policy). It holds messages SQS moved there itself after the
  queue's ``maxReceiveCount`` (original SNS envelopes or raw events, no
  ``reason`` attribute: reason ``redriven``) and input the service rejected
  (``reason``, ``detail``, ``path``, ``source`` attributes, see
  :mod:`.sink`).
- ``records``: records whose job failed every try (Redis, reason ``job_failed``).
- ``file``: the local fallback file (``AMT_DEAD_LETTER_FILE``), rejected input
  that SQS could not take.

:mod:`.letters` holds the decisions, plain functions without I/O: reading a dead
letter out of an SQS message, a Redis entry or a file line, stable ids, ages,
filters and what a replay does. :mod:`.places` reads and settles each place;
:mod:`.command` runs one command.

SQS has no "peek": reading a DLQ receives its messages, which hides them from
every other reader for the visibility timeout. Messages are held (their
visibility extended) while the command runs and made visible again at once
when it ends; after a crash they come back when the timeout lapses. A replay
sends a message to its source queue first and deletes it from the DLQ after,
so an interruption leaves at worst a duplicate, which the router's dedup by
``event_id`` drops.
"""
