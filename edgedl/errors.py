"""The one error hierarchy of edgedl.

Every error a user can cause is an :class:`EdgeDLError`. Its message is one line that says what was
wrong, what was received and what would be right. The CLI prints it and exits non-zero; anything
that is not an ``EdgeDLError`` is a bug.
"""


class EdgeDLError(Exception):
    """Base of all user-facing errors."""

    exit_code = 1

    def __str__(self) -> str:
        # One line, always: multi-line detail belongs in logs, not in the error.
        return " ".join(super().__str__().split())


class InputFileError(EdgeDLError):
    """A file given to edgedl is missing, unreadable, corrupt or of the wrong kind."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class DataError(EdgeDLError):
    """A data set is unknown, missing or fails its checksum."""


class ModelError(EdgeDLError):
    """A model is unknown or cannot be built, loaded or rebuilt."""


class OptionError(EdgeDLError):
    """An option has a value outside what it accepts."""

    exit_code = 2


class TargetError(EdgeDLError):
    """A target is unknown or its description is invalid."""


class UnsupportedOperatorError(EdgeDLError):
    """A model holds an operator the chosen backend cannot take."""


class BackendError(EdgeDLError):
    """A compiler or runtime failed on a valid input."""


class MissingDependencyError(EdgeDLError):
    """An optional toolchain is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str):
        self.module = module
        self.extra = extra
        super().__init__(
            f"this needs the Python package '{module}', which is not installed; "
            f"install it with: pip install 'edgedl[{extra}]'"
        )


class DeviceError(EdgeDLError):
    """A remote device could not be reached or failed during a run."""
