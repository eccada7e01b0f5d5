"""Fixtures shared by the integration tests: the simulator rig of test_websocket.py."""

from tests.integration.test_websocket import rig

__all__ = ["rig"]
