"""End to end on real data no one here made: scikit-learn's bundled handwritten digits."""
import pytest

pytest.importorskip("sklearn")

def test_small_cnn_learns_handwritten_digits(load_example):
    digits = load_example("digits")
    held_out_accuracy, final_loss = digits.train(progress=False)
    assert held_out_accuracy >= 0.97, f"held-out accuracy {held_out_accuracy:.3f}"
    assert final_loss < 0.5
