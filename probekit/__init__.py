"""probekit: test hypotheses about what transformers compute in context.

Importing this package is cheap: torch, zarr and scikit-learn load only when a
function that needs them runs.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
