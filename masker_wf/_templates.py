"""Locate the MNI152 templates used by the template mask strategies, at run time.

masker-wf ships no template. Two installed sources are searched:

* **nilearn's packaged files** (``nilearn/datasets/data/
  mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 1 mm): exactly the
  images nilearn's ``compute_brain_mask`` thresholds, so masks are identical
  to nilearn's. Found without importing nilearn.
* **TemplateFlow's local cache** (``$TEMPLATEFLOW_HOME``, else
  ``~/.cache/templateflow``): ``tpl-MNI152NLin2009cAsym`` brain mask
  (``desc-brain_mask``) or ``label-GM``/``label-WM`` probabilistic
  segmentations, 1 mm preferred, else 2 mm. Nothing is downloaded.

``auto`` (the default) prefers nilearn's files, because the project's
reference is nilearn's output; set ``MASKER_WF_TEMPLATE_SOURCE`` to
``templateflow`` or ``nilearn`` to force one source.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

MASK_TYPES = ("whole-brain", "gm", "wm")
SOURCES = ("auto", "nilearn", "templateflow")
SOURCE_ENV = "MASKER_WF_TEMPLATE_SOURCE"

_NILEARN_FILES = {
    "whole-brain": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_TEMPLATEFLOW_TEMPLATE = "tpl-MNI152NLin2009cAsym"
_TEMPLATEFLOW_SUFFIXES = {
    "whole-brain": "desc-brain_mask.nii.gz",
    "gm": "label-GM_probseg.nii.gz",
    "wm": "label-WM_probseg.nii.gz",
}
_TEMPLATEFLOW_RESOLUTIONS = ("01", "1", "02", "2")


class TemplateNotFoundError(FileNotFoundError):
    """No installed source provides the requested MNI152 template."""


def nilearn_data_dir() -> Path | None:
    """Directory of nilearn's packaged data files, or None if nilearn is not installed."""
    try:
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def templateflow_home() -> Path:
    """TemplateFlow's cache directory: ``$TEMPLATEFLOW_HOME`` or ``~/.cache/templateflow``."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        return Path(os.path.expanduser(home))
    return Path(os.path.expanduser("~")) / ".cache" / "templateflow"


def _nilearn_file(mask_type: str) -> Path | None:
    data_dir = nilearn_data_dir()
    if data_dir is None:
        return None
    path = data_dir / _NILEARN_FILES[mask_type]
    return path if path.is_file() else None


def _templateflow_file(mask_type: str) -> Path | None:
    folder = templateflow_home() / _TEMPLATEFLOW_TEMPLATE
    for resolution in _TEMPLATEFLOW_RESOLUTIONS:
        name = f"{_TEMPLATEFLOW_TEMPLATE}_res-{resolution}_{_TEMPLATEFLOW_SUFFIXES[mask_type]}"
        path = folder / name
        # TemplateFlow's cache is a DataLad/git-annex tree: skip unfetched (broken) links.
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def _check_mask_type(mask_type: str) -> None:
    if mask_type not in MASK_TYPES:
        raise ValueError(
            f"Unknown mask type {mask_type!r}. Only 'whole-brain', 'gm' or 'wm' are accepted."
        )


def find_template(mask_type: str = "whole-brain", source: str | None = None) -> tuple[Path, str]:
    """Path of the MNI152 template for ``mask_type`` and the source it came from.

    Parameters
    ----------
    mask_type : {"whole-brain", "gm", "wm"}, default="whole-brain"
        Which template.
    source : {"auto", "nilearn", "templateflow"}, optional
        Where to look; default from ``$MASKER_WF_TEMPLATE_SOURCE``, else
        ``"auto"`` (nilearn's files first, then TemplateFlow's cache).

    Returns
    -------
    path : pathlib.Path
    source : {"nilearn", "templateflow"}

    Raises
    ------
    TemplateNotFoundError
        Neither source holds the file; the message says how to provide one.
    """
    _check_mask_type(mask_type)
    source = source or os.environ.get(SOURCE_ENV) or "auto"
    if source not in SOURCES:
        raise ValueError(
            f"Unknown template source {source!r} (from the source argument or ${SOURCE_ENV}); "
            f"expected one of {SOURCES}."
        )
    order = ("nilearn", "templateflow") if source == "auto" else (source,)
    finders = {"nilearn": _nilearn_file, "templateflow": _templateflow_file}
    for name in order:
        path = finders[name](mask_type)
        if path is not None:
            return path, name
    nilearn_dir = nilearn_data_dir()
    tf_folder = templateflow_home() / _TEMPLATEFLOW_TEMPLATE
    tf_name = f"{_TEMPLATEFLOW_TEMPLATE}_res-01_{_TEMPLATEFLOW_SUFFIXES[mask_type]}"
    raise TemplateNotFoundError(
        f"The MNI152 {mask_type} template needed by the '{mask_type}-template' mask strategy "
        f"was not found (searched: {', '.join(order)}). Provide it in one of two ways:\n"
        "  1. install nilearn (`pip install nilearn`), which ships "
        f"{_NILEARN_FILES[mask_type]} "
        f"({'nilearn is not installed' if nilearn_dir is None else f'not in {nilearn_dir}'});\n"
        "  2. fetch it into TemplateFlow's cache, e.g. `python -c \"import templateflow.api as "
        f"tf; tf.get('MNI152NLin2009cAsym', resolution=1, "
        f'{_templateflow_query(mask_type)})"` (looked for {tf_folder / tf_name}; set '
        "$TEMPLATEFLOW_HOME to use another cache)."
    )


def _templateflow_query(mask_type: str) -> str:
    if mask_type == "whole-brain":
        return "desc='brain', suffix='mask'"
    return f"label='{mask_type.upper()}', suffix='probseg'"


@lru_cache(maxsize=6)
def _load_scaled(path: str) -> nib.Nifti1Image:
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.float32)
    # nilearn rescales its templates to [0, 1] (in float32) before thresholding.
    data /= data.max()
    scaled = nib.Nifti1Image(data, img.affine)
    scaled.set_data_dtype(np.float32)
    return scaled


def load_template(mask_type: str = "whole-brain", source: str | None = None) -> nib.Nifti1Image:
    """MNI152 template for ``mask_type`` as a float32 image scaled to [0, 1].

    Loaded once per file and cached; callers must not modify its data.

    Parameters
    ----------
    mask_type : {"whole-brain", "gm", "wm"}, default="whole-brain"
    source : {"auto", "nilearn", "templateflow"}, optional
        See :func:`find_template`.

    Returns
    -------
    nibabel.Nifti1Image
    """
    path, _ = find_template(mask_type, source)
    return _load_scaled(str(path))
