"""losswidget: layer-by-layer pruning sensitivity (loss profiles) of ONNX models, in Jupyter.

Public API: `analyze`, `methods`, `LossProfile`, `LayerResult`, `load_profile`, `from_sparseml` and the errors.
"""
from .analysis import analyze, methods
from .demo import demo
from .errors import (AnalysisCancelled, DataError, LossWidgetError, ModelError, ProfileError,
                     SettingsError)
from .profile import LayerResult, LossProfile, from_sparseml, load_profile
from .analysis import approximated as _approximated, magnitude as _magnitude  # noqa: F401 (ready for analyze)

__version__ = "0.1.0"


def __getattr__(name):
    # the widget pulls in ipywidgets / bqplot / anywidget: imported on first use, so the engine and the CLI
    # start without them
    if name == "LossProfileWidget":
        from .widget.app import LossProfileWidget
        return LossProfileWidget
    raise AttributeError(f"module 'losswidget' has no attribute {name!r}")
__all__ = ["analyze", "methods", "demo", "LossProfile", "LossProfileWidget", "LayerResult", "load_profile", "from_sparseml",
           "LossWidgetError", "ModelError", "DataError", "SettingsError", "ProfileError", "AnalysisCancelled"]
