"""The benchmark harness behind `shardfeed bench` and `scripts/bench.py`.

harness.py measures readers and formats tables; store.py is `shardfeed bench STORE`; fit.py
(Keras) times `model.fit`; memory.py the generator's RSS; tutorial.py the Keras tutorial's
generator. The full benchmark: profiles.py runs each profile, goals.py judges it, report.py
writes the report and holds `main`.
"""
