"""Package data of masker-wf (read with :mod:`importlib.resources`).

``derivatives_patterns.json``: the pybids configuration naming every output of the BIDS App
(entity patterns and path patterns, see :mod:`masker_wf.bids.naming`).

``templates/``: the jinja2 templates of the HTML reports (run, subject and group pages, their
style sheet), rendered by :mod:`masker_wf.reports.html`.
"""
