"""minidl's random numbers: one seeded NumPy generator for initialisation and dropout.

``minidl.manual_seed(s)`` makes weight initialisation and dropout masks repeatable. Ops that
draw random numbers take an optional ``generator`` so a caller can keep its own stream.
"""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed minidl's default generator; returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator():
    return _generator


def get_state():
    return _generator.bit_generator.state


def set_state(state):
    _generator.bit_generator.state = state
