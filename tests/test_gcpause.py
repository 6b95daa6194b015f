"""The cyclic collector paused while the scan and the plan make per-sample records (`gcpause.py`)."""

from __future__ import annotations

import gc
import weakref

import pytest

from shardfeed.gcpause import paused_gc


def test_the_collector_is_paused_inside_and_left_as_the_caller_had_it():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause found it off, and leaves it off
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a caller's choice stands
    finally:
        gc.enable()
    with pytest.raises(KeyError), paused_gc():
        raise KeyError("an error inside")
    assert gc.isenabled()


def test_what_the_pause_made_lives_on_in_the_oldest_generation_and_cycles_are_still_freed():
    """The records made inside are not walked again by the next young collections, but a cycle made
    inside is garbage like any other for a full collection."""

    class Node:
        pass

    freed = []
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], 1_000_000)  # no middle-aged collection moves them on meanwhile
    try:
        with paused_gc():
            records = [[k] for k in range(50_000)]
            cycle = Node()
            cycle.self = cycle
            probe = weakref.ref(cycle, freed.append)
            del cycle
        [[k] for k in range(10 * thresholds[0])]  # young collections run
        oldest = {id(o) for o in gc.get_objects(generation=2)}
    finally:
        gc.set_threshold(*thresholds)
    assert id(records[0]) in oldest and id(records[-1]) in oldest
    assert probe() is not None
    gc.collect()
    assert probe() is None and freed


def test_objects_a_caller_froze_stay_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with paused_gc():
            made = [[k] for k in range(1_000)]
        assert gc.get_freeze_count() == frozen
        assert len(made) == 1_000
    finally:
        gc.unfreeze()
