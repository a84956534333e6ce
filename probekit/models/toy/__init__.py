"""probekit's own toy transformers: the model, presets, training and safetensors checkpoints."""

from probekit.models.toy.model import ToyConfig, build_model

__all__ = ["ToyConfig", "build_model"]
