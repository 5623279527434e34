"""End to end on real data no one here made: scikit-learn's bundled handwritten digits."""
import importlib.util
import os

import pytest

pytest.importorskip("sklearn")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "digits.py")


def load_example():
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_cnn_learns_handwritten_digits():
    digits = load_example()
    held_out_accuracy, final_loss = digits.train(progress=False)
    assert held_out_accuracy >= 0.97, f"held-out accuracy {held_out_accuracy:.3f}"
    assert final_loss < 0.5
