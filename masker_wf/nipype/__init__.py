"""masker-wf as a nipype 1 sub-workflow, for fMRIPrep-style pipelines.

``init_masker_wf`` builds the workflow; :mod:`masker_wf.nipype.interfaces` holds the nipype
interfaces (one per step), each a thin face over :mod:`masker_wf._steps`.
"""

from .workflows import LiterateWorkflow, estimate_bold_mem_gb, init_masker_wf, run_masker_wf

__all__ = ["LiterateWorkflow", "estimate_bold_mem_gb", "init_masker_wf", "run_masker_wf"]
