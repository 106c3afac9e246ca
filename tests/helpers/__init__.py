"""Helpers shared by several test modules (fixtures stay in ``tests/conftest.py``).

- ``conformance``  the scenario any shipped harness runs against (:class:`ConformanceScenario`)
- ``records``      reading what a run wrote and what the scripted server received
- ``train``        run directories of hand-made examples, the scripted judge, the train config
"""
