"""r18lab: training-time methods and diagnostics for ResNet-18-class image classifiers."""
from . import data
from .models import create_model

__version__ = "0.1.0"
__all__ = ["create_model", "data", "__version__"]
