"""The process tuning the service applies once it has started."""

from __future__ import annotations

import gc

from amt_ingest.service import GC_THRESHOLDS, _tune_collector


def test_start_up_objects_are_frozen_and_young_objects_collected_less_often():
    thresholds = gc.get_threshold()
    try:
        gc.unfreeze()
        _tune_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > 700  # fewer collections than Python's default
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
