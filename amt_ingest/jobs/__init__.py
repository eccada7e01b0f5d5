"""The jobs: arq functions that apply records' pending changes to the store.

:mod:`.apply` is a record job's run (claim, apply in one transaction, complete,
retry, dead-letter), :mod:`.reread` what a re-read marker means when applying,
:mod:`.worker` the arq worker (functions, reaper cron, pool). Resync jobs are
:func:`amt_ingest.salesforce.resync.resync_topic`.

May import: :mod:`amt_ingest.coordination`, :mod:`amt_ingest.store`,
:mod:`amt_ingest.salesforce`, :mod:`amt_ingest.routing`, telemetry, config, policy.
"""

from .apply import apply_record, apply_records, run_job
from .worker import build_worker, create_arq_pool, lease_ms, reap_orphans, worker_functions

__all__ = [
    "apply_record",
    "apply_records",
    "build_worker",
    "create_arq_pool",
    "lease_ms",
    "reap_orphans",
    "run_job",
    "worker_functions",
]
