"""Output spaces: which labels are BIDS standard templates, and the reference image of the others.

BIDS requires ``SpatialReference`` in the sidecar of a derivative whose ``space-`` label is not
one of the standard template identifiers (``T1w``, ``boldref``, a study template...). The
reference is the image that defines the space in the input dataset, found in this order:

1. the input BOLD's own ``SpatialReference`` (fMRIPrep >= 24 writes it), made absolute;
2. fMRIPrep's reference of the run in that space (``*_space-<label>_boldref.nii.gz``);
3. for ``T1w``/``T2w``, the preprocessed anatomical image (``anat/*_desc-preproc_T1w``) of
   the derivatives, else the raw one;
4. the input BOLD itself, which is an image in that space.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["is_standard_space", "spatial_reference", "standard_spaces"]

#: BIDS 1.11's standard template identifiers (used when bidsschematools is missing).
_STANDARD = [
    "ICBM452AirSpace",
    "ICBM452Warp5Space",
    "IXI549Space",
    "fsaverage",
    "fsaverageSym",
    "fsLR",
    "MNIColin27",
    "MNI152Lin",
    "MNI152NLin2009aSym",
    "MNI152NLin2009bSym",
    "MNI152NLin2009cSym",
    "MNI152NLin2009aAsym",
    "MNI152NLin2009bAsym",
    "MNI152NLin2009cAsym",
    "MNI152NLin6Sym",
    "MNI152NLin6Asym",
    "MNI305",
    "NIHPD",
    "OASIS30AntsOASISAnts",
    "OASIS30Atropos",
    "Talairach",
    "UNCInfant",
]
_ANATOMICAL = ("T1w", "T2w")


@functools.cache
def standard_spaces() -> frozenset[str]:
    """The BIDS standard template identifiers, from the schema pybids installs."""
    try:
        from bidsschematools import schema

        return frozenset(schema.load_schema().objects.enums._StandardTemplateCoordSys.enum)
    except Exception:  # an older or absent schema package: the list of BIDS 1.11
        return frozenset(_STANDARD)


def is_standard_space(label: str | None) -> bool:
    """True for a standard template (or no space at all): no ``SpatialReference`` required."""
    return label is None or label in standard_spaces()


def _absolute(reference, dataset_root: Path):
    """A sidecar's reference as an absolute path (or as given for URIs and ``orig``)."""
    if isinstance(reference, dict):
        return {key: _absolute(value, dataset_root) for key, value in reference.items()}
    text = str(reference)
    if text.startswith("bids::"):
        return dataset_root / text.removeprefix("bids::")
    if text == "orig" or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):
        return text  # 'orig', or a URI: meaningful as it is
    return dataset_root / text  # dataset-relative path


def _anatomical(run, label: str) -> Path | None:
    subject = f"sub-{run.entities['subject']}"
    session = run.entities.get("session")
    roots = [run.dataset_root]
    if run.raw_file is not None:
        # raw_root/sub-X[/ses-Y]/func/file
        roots.append(run.raw_file.parents[3 if session else 2])
    for root in roots:
        if root is None:
            continue
        folders = [root / subject / f"ses-{session}" / "anat"] if session else []
        folders.append(root / subject / "anat")  # fMRIPrep's anatomy of several sessions
        for folder in folders:
            found = sorted(folder.glob(f"{subject}*_desc-preproc_{label}.nii*"))
            found = found or sorted(
                p for p in folder.glob(f"{subject}*_{label}.nii*") if "_space-" not in p.name
            )
            if found:
                return found[0]
    return None


def spatial_reference(run):
    """The reference image of the space of ``run``'s BOLD, when BIDS requires one.

    Parameters
    ----------
    run : masker_wf.bids.layout.RunInputs

    Returns
    -------
    pathlib.Path, str, dict or None
        A file of an input dataset (to be written as a BIDS URI), a URI or ``'orig'`` as
        the input's sidecar gives it, a mapping of those, or None when the space is a
        standard template (or there is no ``space`` entity) and the input gives none.
    """
    given = run.metadata.get("SpatialReference")
    root = Path(run.dataset_root or run.bold_file.parent)
    if given:
        return _absolute(given, root)
    label = run.entities.get("space")
    if is_standard_space(label):
        return None
    bold = Path(run.bold_file)
    name = re.sub(r"_desc-[A-Za-z0-9]+", "", bold.name)
    name = re.sub(r"_bold(\.nii(\.gz)?)$", r"_boldref\1", name)
    for candidate in (bold.with_name(name), bold.with_name(name.replace(".nii.gz", ".nii"))):
        if candidate != bold and candidate.is_file():
            return candidate
    if label in _ANATOMICAL:
        anatomical = _anatomical(run, label)
        if anatomical is not None:
            return anatomical
    return bold
