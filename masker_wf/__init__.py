"""masker-wf: nilearn's NiftiMasker as a fast, reproducible pipeline."""

from ._version import __version__

__all__ = ["NiftiMasker", "__version__"]


def __getattr__(name):
    # Import the estimator lazily: ``import masker_wf.signal`` must not pay for scikit-learn.
    if name == "NiftiMasker":
        from .maskers import NiftiMasker

        return NiftiMasker
    raise AttributeError(f"module 'masker_wf' has no attribute {name!r}")
