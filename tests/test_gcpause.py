"""The cyclic collector paused while the scan and the plan make per-sample records (`gcpause.py`)."""

from __future__ import annotations

import gc

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

