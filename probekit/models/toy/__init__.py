"""probekit's own toy transformers: the model, presets, training, safetensors checkpoints and the
``toy:`` adapter. Imports lazily: ``probekit.models.toy.adapter`` loads no torch until a model loads."""

__all__ = ["ToyConfig", "build_model"]


def __getattr__(name):
    if name in __all__:
        from probekit.models.toy import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
