import signal
import sys

import amt_ingest

# Importing the service takes a few seconds; a SIGTERM meanwhile (an orchestrator
# scaling down, a restart) is remembered and honoured as a clean shutdown, not a
# death by signal. cli.main() puts the default handler back for other commands.
signal.signal(signal.SIGTERM, lambda signum, _frame: amt_ingest.early_signals.append(signum))

from amt_ingest.cli import main  # noqa: E402

sys.exit(main())
