"""Every error bertnpu raises on purpose. Messages say what was expected, what was found, and where."""

from __future__ import annotations


class BertNpuError(Exception):
    """Base class of all bertnpu errors."""


class FileProblem(BertNpuError):
    """Something is wrong with one file: `path` names it, `problem` says what."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BundleError(FileProblem):
    """A bundle file is missing, corrupt, or disagrees with bundle.json."""


class DataError(FileProblem):
    """A data file (calibration sentences, STS-B) is missing or cannot be read."""


class BackendUnavailableError(BertNpuError):
    """The requested encoder backend cannot run here (no device, no .mxq, library not installed)."""


class BackendCallError(BertNpuError):
    """One encoder call failed on the device (the others may succeed): a transient fault."""


class NpuCallError(BackendCallError):
    """An NPU call failed on one core; the message names the core and qbruntime's error code."""


class NpuTimeoutError(BertNpuError):
    """An NPU call did not finish within the encoder's npu_timeout_s. The message names the core."""


class EncoderClosedError(BertNpuError, RuntimeError):
    """The encoder was closed (by close(), or as the process exits) before this work was done.
    A RuntimeError too, as the error of a closed encoder always was."""


class EncoderOutputError(BertNpuError):
    """The encoder backend returned values that are not finite numbers (NaN or infinity)."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: qbruntime's are "<Code> occurred.\\nPlease visit <docs>",
    and the code is the news."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
