"""r18lab: training-time methods and diagnostics for ResNet-18-class image classifiers."""
from . import data
from .models import create_model
from .predict import Predictions, predict  # shadows the module name: `from r18lab.predict import X` still works

__version__ = "0.1.0"
__all__ = ["Predictions", "create_model", "data", "predict", "__version__"]
