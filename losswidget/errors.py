"""Errors a user can act on. Every failure the engine expects is one of these, never a numpy/protobuf trace."""


class LossWidgetError(Exception):
    """Base class: the message says what is wrong, where, and what to do."""


class ModelError(LossWidgetError):
    """The ONNX model (or its external data) cannot be read."""


class DataError(LossWidgetError):
    """Data given for a data-driven analysis does not fit the model."""


class SettingsError(LossWidgetError, ValueError):
    """An analysis setting (levels, target, method) is invalid."""


class ProfileError(LossWidgetError):
    """A profile file cannot be read or written."""


class AnalysisCancelled(LossWidgetError):
    """The analysis was cancelled through its `cancel` event; no profile was produced."""
