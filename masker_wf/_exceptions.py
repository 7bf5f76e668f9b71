"""Exception and warning classes shared by the core ops."""


class DimensionError(TypeError, ValueError):
    """An image does not have the dimensionality an operation needs.

    A ``TypeError``, as nilearn's ``DimensionError`` (raised by its maskers), and a
    ``ValueError``, as nilearn's mask functions raise for such images: code catching
    either keeps working, and every face raises this one class.
    """

    def __init__(self, file_dimension, required_dimension, name=None):
        self.file_dimension = file_dimension
        self.required_dimension = required_dimension
        self.name = name
        # ``name`` is ready to print: an argument name and the image's description.
        what = name if name else "Input data"
        super().__init__(
            f"{what} has incompatible dimensionality: expected a {required_dimension}D image "
            f"and got a {file_dimension}D image."
        )

    def __reduce__(self):
        # The constructor takes the dimensions, not the message: pickle those (process
        # pools and the steps' error files carry this exception across processes).
        return (
            type(self),
            (self.file_dimension, self.required_dimension, self.name),
            self.__dict__,
        )


class SampleMaskError(ValueError, IndexError):
    """An invalid ``sample_mask``.

    A ``ValueError`` that is also an ``IndexError``, which is what nilearn raises for
    out-of-range indices.
    """


class SampleMaskTypeError(SampleMaskError, TypeError):
    """A ``sample_mask`` that is neither integer indices nor booleans (also a TypeError)."""


class AllVolumesRemovedError(SampleMaskError):
    """Scrubbing (``sample_mask``) removed every volume of a run."""

    def __init__(self, message=None):
        super().__init__(
            message or "The sample_mask removes every volume: no time point is left to clean."
        )


class BoundingBoxError(ValueError):
    """The target field of view contains none of the image data."""


class MaskWarning(UserWarning):
    """A computed mask is suspicious (for instance empty)."""


class IntermediateMismatchError(ValueError):
    """Data computed upstream do not fit the image or mask they are said to come from.

    ``source`` names which: ``"extracted"`` (signals extracted upstream) or
    ``"hv_confounds"`` (high-variance confounds computed upstream).
    """

    def __init__(self, message: str, source: str):
        super().__init__(message)
        self.source = source
