"""The BIDS App between its command line and the BIDS layer.

- :mod:`~masker_wf.app.settings`: the frozen :class:`~masker_wf.app.settings.Settings` of an
  invocation, built from a dict of option values and checked by the one validator;
- :mod:`~masker_wf.app.plan`: input checks, output preparation, the runs to process;
- :mod:`~masker_wf.app.run`: one run (inputs, Pydra workflow, outputs), failures as results;
- :mod:`~masker_wf.app.outputs`: what each derivative, the report and the provenance hold;
- :mod:`~masker_wf.app.commit`: a run's outputs staged, then committed as one set under its
  lock (provenance record last), recovered after a kill;
- :mod:`~masker_wf.app.workers`: local worker processes that die with the App;
- :mod:`~masker_wf.app.summary`: subject pages, failure logs, exit code, the group level;
- :mod:`~masker_wf.app.slurm`: job arrays, ``jobs.tsv``, Pydra's SLURM worker;
- :mod:`~masker_wf.app.execute`: the two analysis levels end to end.

Imports go one way: :mod:`masker_wf.cli` uses this package, which uses :mod:`masker_wf.bids`
and the engines below it, never the other way round.
"""
