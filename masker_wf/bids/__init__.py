"""BIDS layer of masker-wf: run discovery (pybids), fMRIPrep confounds, derivatives writing,
provenance, and the BIDS App runner."""
