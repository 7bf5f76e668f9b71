"""Exception and warning classes shared by the core ops."""


class DimensionError(TypeError):
    """An image does not have the dimensionality an operation needs.

    Subclasses ``TypeError``, as nilearn's does, so that code catching
    nilearn's error keeps working.
    """

    def __init__(self, file_dimension, required_dimension, name=None):
        self.file_dimension = file_dimension
        self.required_dimension = required_dimension
        self.name = name
        what = f"{name!r}" if name else "Input data"
        super().__init__(
            f"{what} has incompatible dimensionality: expected a {required_dimension}D image "
            f"and got a {file_dimension}D image."
        )


class AllVolumesRemovedError(ValueError):
    """Scrubbing (``sample_mask``) removed every volume of a run."""

    def __init__(self, message=None):
        super().__init__(
            message or "The sample_mask removes every volume: no time point is left to clean."
        )


class BoundingBoxError(ValueError):
    """The target field of view contains none of the image data."""


class MaskWarning(UserWarning):
    """A computed mask is suspicious (for instance empty)."""
