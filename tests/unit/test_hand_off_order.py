"""Hand-offs under way at once reach Redis in order (``coordination.Turn``)."""

from __future__ import annotations

import asyncio

from amt_ingest.routing.handoff import Turn


async def test_a_hand_off_that_ran_nothing_lets_the_next_go_only_after_the_one_before():
    loop = asyncio.get_running_loop()
    first = Turn(None, loop.create_future())
    empty = Turn(first.done, loop.create_future())  # its events were all filtered out
    empty.finish()
    await asyncio.sleep(0)
    assert not empty.done.done(), "the next would overtake the first"
    first.finish()
    await asyncio.sleep(0)
    assert empty.done.done()


async def test_finishing_twice_or_with_nothing_before_is_done_at_once():
    loop = asyncio.get_running_loop()
    turn = Turn(None, loop.create_future())
    turn.finish()
    turn.finish()
    assert turn.done.done()
    after_done = Turn(turn.done, loop.create_future())
    after_done.finish()
    assert after_done.done.done()
