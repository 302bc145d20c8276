"""Models: backbones, heads, the classifier that joins them."""
from .classifier import Classifier, ModelOutput, PeerGroup, create_model, export_state

__all__ = ["Classifier", "ModelOutput", "PeerGroup", "create_model", "export_state"]
