"""Command line of masker-wf (the BIDS App)."""
