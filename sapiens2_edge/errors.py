"""Typed errors raised for bad input anywhere in the SDK.

Every message says what was wrong and what was expected. All errors derive from
:class:`Sapiens2EdgeError`, and each one also derives from the built-in exception a
caller would naturally catch (``ValueError``, ``FileNotFoundError``, ...).
"""

from __future__ import annotations


class Sapiens2EdgeError(Exception):
    """Base class of every error this package raises on purpose."""


# --- checkpoints -------------------------------------------------------------------------------
class CheckpointError(Sapiens2EdgeError, ValueError):
    """A checkpoint file is unreadable, corrupt or does not match the expected layout."""


class CheckpointNotFoundError(Sapiens2EdgeError, FileNotFoundError):
    """No checkpoint at the given path / Hugging Face id (message says how to get one)."""


class CorruptCheckpointError(CheckpointError):
    """The safetensors container itself is broken: truncated, bad header, lying offsets."""


class StateDictMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped tensors for the architecture (strict loading)."""


class ArchInferenceError(CheckpointError):
    """The architecture cannot be worked out from the tensor names and shapes."""


class TaskMismatchError(Sapiens2EdgeError, ValueError):
    """A checkpoint of one task was used where another task was asked for."""


# --- inputs ------------------------------------------------------------------------------------
class InvalidImageError(Sapiens2EdgeError, ValueError):
    """An input image has the wrong type, dtype, channel count or size, or holds NaN."""


class ImageNotFoundError(InvalidImageError, FileNotFoundError):
    """An image path that does not exist."""


class InvalidBoxError(Sapiens2EdgeError, ValueError):
    """A person box is malformed, degenerate or outside the image."""


class InputSizeError(Sapiens2EdgeError, ValueError):
    """A network input size the model cannot take (not a multiple of the patch size, or
    a size the pointmap scale branch was not built for)."""


class InvalidTensorError(Sapiens2EdgeError, ValueError):
    """A network input tensor has the wrong rank, channel count or dtype, or holds NaN."""


# --- configuration -------------------------------------------------------------------------------
class ConfigError(Sapiens2EdgeError, ValueError):
    """An option has a value outside what is supported (unknown preset, task, backend...)."""


class BackendUnavailableError(Sapiens2EdgeError, ImportError):
    """The requested runtime backend is not installed on this machine (message has the hint)."""


# --- quantization --------------------------------------------------------------------------------
class QuantizationError(Sapiens2EdgeError, ValueError):
    """A quantization request that cannot be carried out (bad recipe, layer name, model state)."""


class UnknownSchemeError(QuantizationError, ConfigError):
    """A quantization scheme name that does not exist (message lists the schemes)."""


class CalibrationError(QuantizationError):
    """Calibration data that is missing, empty, or of the wrong type, shape or size."""


class AlreadyQuantizedError(QuantizationError):
    """A model that is already quantized was passed to ``quantize`` again."""


# --- export and artifacts --------------------------------------------------------------------------
class ExportError(Sapiens2EdgeError, RuntimeError):
    """An export that failed, including a verification against the torch model that did not pass."""


class ArtifactError(Sapiens2EdgeError, ValueError):
    """An artifact directory that is incomplete, inconsistent or from a newer SDK."""


class ChecksumError(ArtifactError):
    """A file of an artifact whose sha256 does not match its manifest."""
