"""probekit's built-in model adapters, registered like any plugin's."""

from probekit.hookspecs import hookimpl


@hookimpl
def probekit_register_models(register):
    from probekit.models.adapters import ToyAdapter

    register("toy", ToyAdapter)
