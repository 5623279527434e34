"""minidl's random numbers: one seeded NumPy generator for initialisation and dropout, and the
random-number states of a training run.

``minidl.manual_seed(s)`` makes weight initialisation and dropout masks repeatable. Ops that
draw random numbers take an optional ``generator`` so a caller can keep its own stream.

A checkpoint that is to resume a run bitwise must hold every state the run draws from:
``find_generators`` names the NumPy Generators a model and a loader keep, ``capture_state``
takes those states together with minidl's, NumPy's global and Python's, and
``restore_state`` puts them back.
"""
import random as python_random
import warnings

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


# -- the states of a training run ----------------------------------------------------------------
def find_generators(model, loader, extra):
    """Every NumPy Generator the run draws from, by a stable name: attributes of the model's
    modules (a Dropout with its own generator), of the train loader, and ``extra``."""
    found, seen = {}, set()

    def add(name, value):
        if isinstance(value, np.random.Generator) and id(value) not in seen:
            seen.add(id(value))
            found[name] = value

    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            add(f"model.{module_name}.{attr}" if module_name else f"model.{attr}", value)
    for attr, value in getattr(loader, "__dict__", {}).items():
        add(f"train_loader.{attr}", value)
    for i, g in enumerate(extra):
        if not isinstance(g, np.random.Generator):
            raise TypeError(f"fit: generators[{i}] is a {type(g).__name__}, not a numpy Generator")
        add(f"generators[{i}]", g)
    return found


def capture_state(generators):
    """The states of minidl's generator, NumPy's global one, Python's and ``generators``
    (name -> Generator, from ``find_generators``), as a checkpoint stores them."""
    return {
        "minidl": get_state(),
        "numpy_global": np.random.get_state(),
        "python": python_random.getstate(),
        "generators": {name: g.bit_generator.state for name, g in generators.items()},
    }


def restore_state(state, generators):
    """Put back what ``capture_state`` took; a generator the state does not name keeps its own
    state, with a warning that the resumed run will differ."""
    set_state(state["minidl"])
    np.random.set_state(state["numpy_global"])
    python_random.setstate(state["python"])
    saved = state["generators"]
    for name, g in generators.items():
        if name in saved:
            g.bit_generator.state = saved[name]
        else:
            warnings.warn(f"fit(resume=True): the checkpoint has no state for the generator {name}; "
                          "the resumed run will not repeat the uninterrupted one exactly")
