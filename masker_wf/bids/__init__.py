"""BIDS layer of masker-wf: run discovery (pybids), fMRIPrep confounds, output naming,
derivatives writing and provenance (the App that uses them is :mod:`masker_wf.app`)."""
