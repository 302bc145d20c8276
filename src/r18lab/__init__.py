"""r18lab: training-time methods and diagnostics for ResNet-18-class image classifiers."""
from . import data
from . import train as _train_package  # noqa: F401  loaded first, so that `r18lab.train` below stays the function
from .api import evaluate, load_model, train  # `train` shadows the subpackage's name: `r18lab.train.run` imports work
from .models import create_model
from .predict import Predictions, predict  # shadows the module name: `from r18lab.predict import X` still works

__version__ = "0.1.0"
__all__ = ["Predictions", "create_model", "data", "evaluate", "load_model", "predict", "train", "__version__"]
