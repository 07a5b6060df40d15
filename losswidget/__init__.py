"""losswidget: layer-by-layer pruning sensitivity (loss profiles) of ONNX models, in Jupyter.

Public API: `analyze`, `methods`, `LossProfile`, `LayerResult`, `load_profile`, `from_sparseml` and the errors.
"""
from .analysis import analyze, methods
from .errors import (AnalysisCancelled, DataError, LossWidgetError, ModelError, ProfileError,
                     SettingsError)
from .profile import LayerResult, LossProfile, from_sparseml, load_profile
from .analysis import approximated as _approximated, magnitude as _magnitude  # noqa: F401 (ready for analyze)

__version__ = "0.1.0"
__all__ = ["analyze", "methods", "LossProfile", "LayerResult", "load_profile", "from_sparseml",
           "LossWidgetError", "ModelError", "DataError", "SettingsError", "ProfileError", "AnalysisCancelled"]
