"""The benchmark harness behind `shardfeed bench` and `scripts/bench.py`."""
