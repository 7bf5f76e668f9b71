"""Package data of masker-wf (read with :mod:`importlib.resources`).

``derivatives_patterns.json``: the pybids configuration naming every output of the BIDS App
(entity patterns and path patterns, see :mod:`masker_wf.bids.naming`).
"""
