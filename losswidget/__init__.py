"""losswidget: layer-by-layer pruning sensitivity (loss profiles) of ONNX models, and plans of what to prune.

Public API: `analyze`, `methods`, `load_profile`, `load_profiles`, `from_sparseml`, `load_plan`, `prune`, `demo`,
`LossProfile`, `LayerResult`, `Plan`, `LossProfileWidget` and the errors.
"""
from .analysis import analyze, from_sparseml, methods
from .demo import demo
from .errors import (AnalysisCancelled, DataError, LossWidgetError, ModelError, ProfileError,
                     SettingsError)
from .plan import Plan, load_plan
from .profile import LayerResult, LossProfile, load_profile, load_profiles
from .prune import prune

__version__ = "0.1.0"


def __getattr__(name):
    # the widget pulls in ipywidgets / bqplot / anywidget: imported on first use, so the engine and the CLI
    # start without them
    if name == "LossProfileWidget":
        from .widget.app import LossProfileWidget
        return LossProfileWidget
    raise AttributeError(f"module 'losswidget' has no attribute {name!r}")


__all__ = ["analyze", "methods", "demo", "LossProfile", "LossProfileWidget", "LayerResult", "load_profile",
           "load_profiles", "from_sparseml", "Plan", "load_plan", "prune", "LossWidgetError", "ModelError", "DataError",
           "SettingsError", "ProfileError", "AnalysisCancelled"]
