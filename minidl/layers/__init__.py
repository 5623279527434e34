"""Layers: modules holding parameters and calling the ops in ``minidl.ops``."""
from .activation import ReLU, Sigmoid
from .conv import Conv2d
from .dropout import Dropout
from .linear import Flatten, Linear
from .module import Module, Parameter
from .sequential import Sequential
from .normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d

__all__ = ["Module", "Parameter", "Sequential", "Conv2d", "MaxPool2d", "LocalResponseNorm",
           "ReLU", "Sigmoid", "Dropout", "Linear", "Flatten", "BatchNorm1d", "BatchNorm2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "MaxUnpool2d"]
