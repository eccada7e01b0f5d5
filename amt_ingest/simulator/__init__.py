"""A realistic stand-in for Passport (PROTOCOL.md): WebSocket stream, SNS, Salesforce REST.

Used by ``python -m amt_ingest simulate``, end-to-end tests and benchmarks::

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    asyncio.run(run_simulator(options_from_args(parser.parse_args())))

Layout: :mod:`.world` (pure: events, truth, delivery plan), :mod:`.stream`
(pure: stream protocol decisions), :mod:`.server` (WebSocket endpoint, pacing,
:class:`Simulator`), :mod:`.rest` (Salesforce re-read API), :mod:`.aws` (SNS, SQS).
"""

from amt_ingest.simulator.options import SimulatorOptions, add_arguments, options_from_args
from amt_ingest.simulator.server import Simulator, run_simulator

__all__ = ["Simulator", "SimulatorOptions", "add_arguments", "options_from_args", "run_simulator"]
