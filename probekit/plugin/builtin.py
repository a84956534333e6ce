"""probekit's built-in model adapters, registered like any plugin's."""

from probekit.plugin.hookspecs import hookimpl


@hookimpl
def probekit_register_models(register):
    from probekit.models.adapters import ToyAdapter
    from probekit.models.hf import HFAdapter  # light: transformers loads only in HFAdapter.load
    from probekit.models.nnsight import NNsightAdapter  # light: nnsight loads only in NNsightAdapter.load
    from probekit.models.tlens import TLensAdapter  # light: transformer_lens loads only in TLensAdapter.load
    from probekit.models.torch_module import TorchModuleAdapter

    register("toy", ToyAdapter)
    register("hf", HFAdapter)
    register("torch", TorchModuleAdapter)
    register("tlens", TLensAdapter)
    register("nnsight", NNsightAdapter)
