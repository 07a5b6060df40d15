"""Errors a user can act on. Every failure the engine expects is one of these, never a numpy/protobuf trace."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when the message is empty: MemoryError's is),
    for quoting another library's error inside one of ours."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class LossWidgetError(Exception):
    """Base class: the message says what is wrong, where, and what to do."""


class ModelError(LossWidgetError):
    """The ONNX model (or its external data) cannot be read."""


class ModelChanged(ModelError):
    """The model file was rewritten or truncated in place while it was being read: the whole analysis
    stops (its layers would mix two models)."""


class DataError(LossWidgetError):
    """Data given for a data-driven analysis does not fit the model."""


class SettingsError(LossWidgetError, ValueError):
    """An analysis setting (levels, target, method) is invalid."""


class ProfileError(LossWidgetError):
    """A profile file cannot be read or written."""


class AnalysisCancelled(LossWidgetError):
    """The analysis was cancelled through its `cancel` event. `partial`: the layers finished before that, as a
    profile marked partial, or None when none had (or the method keeps none)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.partial = None
