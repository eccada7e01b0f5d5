"""A realistic stand-in for Passport (PROTOCOL.md): WebSocket stream, SNS, Salesforce REST.

Used by ``python -m amt_ingest simulate``, end-to-end tests and benchmarks::

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    asyncio.run(run_simulator(options_from_args(parser.parse_args())))

Layout: pure, seeded model: :mod:`.world` (events in commit order and their
truth), :mod:`.population` and :mod:`.values` (records, transactions, field
values), :mod:`.truth` (the ground truth, the delete log), :mod:`.delivery` (how
each event travels), :mod:`.frames` and :mod:`.malformed` (what is sent),
:mod:`.stream` (stream protocol decisions). Delivery, with I/O: :mod:`.server`
(WebSocket endpoint, pacing, :class:`Simulator`), :mod:`.rest` (the Salesforce
API), :mod:`.control` (its own control API), :mod:`.aws` (SNS, SQS).

May import: :mod:`amt_ingest.routing` (the topics) and nothing else of the
service; only the CLI imports it.
"""

from amt_ingest.simulator.options import SimulatorOptions, add_arguments, options_from_args
from amt_ingest.simulator.server import Simulator, run_simulator

__all__ = ["Simulator", "SimulatorOptions", "add_arguments", "options_from_args", "run_simulator"]
