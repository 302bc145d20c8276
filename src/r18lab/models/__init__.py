"""Models: backbones, heads, model transforms, the classifier that joins them."""
from .classifier import (Classifier, ModelOutput, PeerGroup, create_model, export_state, peer_key, split_entry,
                         sub_key)

__all__ = ["Classifier", "ModelOutput", "PeerGroup", "create_model", "export_state", "peer_key", "split_entry",
           "sub_key"]
