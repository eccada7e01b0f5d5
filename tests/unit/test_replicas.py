"""Roles, replica names and a replica's heartbeat entry (pure, no Redis, no event loop)."""

from __future__ import annotations

import pytest

from amt_ingest.config import Settings
from amt_ingest.errors import ConfigError
from amt_ingest.operations.heartbeat import replica_entry
from amt_ingest.service import Roles, replica_names
from amt_ingest.sources.election import LEADER, STANDBY, STEP_DOWN_AT, TRIES_PER_TTL, ElectionState
from amt_ingest.sources.websocket import ListenerState

QUEUE = "http://127.0.0.1:4566/000000000000/amt-ingest-monitor"


def test_by_default_a_process_runs_everything_it_is_configured_for():
    assert Roles.of(Settings(sqs_queue_urls=[QUEUE])).names == ["websocket", "sqs", "worker"]
    # No queue URLs: no SQS intake, whatever AMT_RUN_SQS says.
    assert Roles.of(Settings()).names == ["websocket", "worker"]


@pytest.mark.parametrize(
    ("off", "names"),
    [
        ({"run_websocket": False}, ["sqs", "worker"]),
        ({"run_sqs": False}, ["websocket", "worker"]),
        ({"run_worker": False}, ["websocket", "sqs"]),
        ({"run_websocket": False, "run_sqs": False}, ["worker"]),
    ],
)
def test_each_role_can_be_turned_off(off, names):
    roles = Roles.of(Settings(sqs_queue_urls=[QUEUE], **off))
    assert roles.names == names
    assert roles.intake is ("websocket" in names or "sqs" in names)


def test_every_start_is_a_new_instance_of_the_named_replica():
    settings = Settings(replica_id="intake-a")
    (name, first), (_, second) = replica_names(settings), replica_names(settings)
    assert name == "intake-a" and first != second
    assert first.startswith("intake-a.") and " " not in first


def test_a_replica_id_with_a_space_is_refused(monkeypatch):
    from amt_ingest.config import load_settings

    monkeypatch.setenv("AMT_REPLICA_ID", "intake a")
    with pytest.raises(ConfigError, match="AMT_REPLICA_ID"):
        load_settings()


def test_a_leader_steps_down_before_its_lease_can_lapse():
    # Renewals every fifth of the TTL; with the last confirmed one sent at t, the
    # leader stops at t + 0.6 TTL, Redis keeps the lease until at least t + TTL.
    assert 1 / TRIES_PER_TTL < STEP_DOWN_AT < 1
    # At least two renewals may fail in a row before it steps down.
    assert STEP_DOWN_AT * TRIES_PER_TTL >= 2


def test_the_leaders_entry_carries_its_connection_and_a_standbys_does_not():
    listener = ListenerState(connected=True, connected_since=90.0, reconnects=2)
    leader = ElectionState(role=LEADER, since=80.0, token=7, terms=1)
    entry = replica_entry(
        name="a",
        roles=["websocket", "sqs"],
        started_ms=1,
        election=leader,
        listener=listener,
        leases_held=3,
        now=100.0,
    )
    assert entry["websocket"] == "leader" and entry["ws_term"] == 7
    assert (entry["connected"], entry["state_for_s"], entry["reconnects"]) == (True, 10.0, 2)
    assert entry["ws_role_for_s"] == 20.0 and entry["job_leases"] == 3
    standby = replica_entry(
        name="b",
        roles=["websocket"],
        started_ms=1,
        election=ElectionState(role=STANDBY, since=95.0),
        listener=ListenerState(),
        leases_held=0,
        now=100.0,
    )
    assert standby["websocket"] == "standby" and "connected" not in standby
    worker = replica_entry(
        name="w",
        roles=["worker"],
        started_ms=1,
        election=None,
        listener=None,
        leases_held=5,
        now=100.0,
    )
    assert worker["websocket"] == "off" and worker["roles"] == ["worker"]
