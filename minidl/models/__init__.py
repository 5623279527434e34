"""Models: AlexNet, EuroNet, and tools to look inside any model (summary table, taps)."""
from .alexnet import AlexNet, alexnet
from .euronet import EuroNet, euronet
from .summary import ModelSummary, capture, forward_with, summary

__all__ = ["AlexNet", "alexnet", "EuroNet", "euronet", "ModelSummary", "capture",
           "forward_with", "summary"]
