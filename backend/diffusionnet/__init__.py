"""DiffusionNet (Sharp et al. 2022): operators in `geometry`, layers in `layers`."""
from .geometry import Operators, compute_operators
from .layers import DiffusionNet, TorchOperators

__all__ = ["Operators", "compute_operators", "DiffusionNet", "TorchOperators"]
