"""The autograd engine: Tensor arithmetic, the backward pass, no_grad and gradcheck."""
import numpy as np
import pytest

import minidl
from minidl import Function, Tensor, layers


def rand(*shape, seed=0, low=0.5, high=1.5):
    return np.random.default_rng(seed).uniform(low, high, shape)


@pytest.mark.parametrize("fn, shapes", [
    (lambda a, b: a + b, [(3, 4), (4,)]),
    (lambda a, b: a - b, [(3, 1), (1, 4)]),
    (lambda a, b: a * b, [(2, 3, 4), (3, 1)]),
    (lambda a, b: a / b, [(3, 4), (3, 4)]),
    (lambda a, b: (a ** 3) * 2.0 - 1.5 / b, [(5,), (5,)]),
    (lambda a, b: (a @ b).exp().log(), [(3, 4), (4, 2)]),
    (lambda a, b: (a.T @ a).mean(axis=0) + b.sum(), [(3, 4), (2, 2)]),
    (lambda a, b: a.reshape(2, 6).sum(axis=1, keepdims=True) * b[:, :1], [(3, 4), (2, 3)]),
    (lambda a, b: -a.transpose(1, 0)[::2] + b.mean(), [(3, 4), (4,)]),
])
def test_arithmetic_gradients_match_finite_differences(fn, shapes):
    inputs = [Tensor(rand(*s, seed=i), requires_grad=True) for i, s in enumerate(shapes)]
    assert minidl.gradcheck(fn, inputs)


def test_broadcast_gradient_is_summed_back_to_input_shape():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    b = Tensor(np.full((3,), 2.0), requires_grad=True)
    (a * b).sum().backward()
    np.testing.assert_array_equal(b.grad.data, [2.0, 2.0, 2.0])  # summed over the 2 rows
    np.testing.assert_array_equal(a.grad.data, np.full((2, 3), 2.0))


def test_tensor_used_twice_accumulates_both_paths():
    x = Tensor(np.array([3.0]), requires_grad=True)
    (x * x + x).backward()
    np.testing.assert_allclose(x.grad.data, [7.0])  # d(x^2 + x)/dx = 2x + 1


def test_backward_twice_accumulates_exactly_twice():
    x = Tensor(rand(4, seed=1), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    once = x.grad.data.copy()
    y.backward()
    np.testing.assert_array_equal(x.grad.data, 2 * once)
    np.testing.assert_allclose(once, 2 * x.data)


def test_second_backward_without_retain_graph_is_a_clear_error():
    x = Tensor(rand(3), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph"):
        y.backward()


def test_saved_arrays_are_freed_after_backward():
    x = Tensor(rand(3), requires_grad=True)
    product = x * x
    loss = product.sum()
    assert product.creator.saved  # Mul saved its inputs
    loss.backward()
    assert product.creator.saved == () and product.creator.inputs == ()


def test_deep_chain_needs_no_recursion():
    x = Tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, np.full(3, 1.001 ** 3000))


def test_no_grad_records_nothing():
    x = Tensor(rand(3), requires_grad=True)
    with minidl.no_grad():
        y = x * 2
        assert not minidl.is_grad_enabled()
    assert minidl.is_grad_enabled()
    assert not y.requires_grad and y.creator is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_detach_cuts_the_graph():
    x = Tensor(rand(3), requires_grad=True)
    y = (x * 2).detach()
    assert not y.requires_grad and y.creator is None
    np.testing.assert_array_equal(y.data, 2 * x.data)


def test_python_numbers_keep_float32():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = (x * 0.5 + 1.0) / 3.0 - 2.0 ** 0.5
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
    assert Tensor([1.5, 2.5]).dtype == np.float32


def test_requires_grad_on_integers_is_rejected():
    with pytest.raises(TypeError, match="float32/float64"):
        Tensor(np.arange(3), requires_grad=True)


def test_backward_of_non_scalar_needs_a_gradient():
    x = Tensor(rand(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="single-element"):
        (x * 2).backward()
    (x * 2).backward(np.ones(3))
    np.testing.assert_array_equal(x.grad.data, [2, 2, 2])


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 2\)"):
        Tensor(np.ones((3, 4))) @ Tensor(np.ones((3, 2)))


class _WrongSquare(Function):
    """x^2 with a deliberately wrong backward (3x instead of 2x)."""

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, g):
        (x,) = self.saved
        return 3 * x * g


def test_gradcheck_catches_a_wrong_backward_and_names_the_element():
    x = Tensor(rand(2, 3), requires_grad=True)
    with pytest.raises(minidl.GradcheckError, match=r"input 0 .*element"):
        minidl.gradcheck(lambda t: _WrongSquare.apply(t), [x])
    assert not minidl.gradcheck(lambda t: _WrongSquare.apply(t), [x], raise_exception=False)


def test_gradcheck_random_directions_for_large_inputs():
    x = Tensor(rand(40, 40), requires_grad=True)
    assert minidl.gradcheck(lambda t: (t * t).exp(), [x], max_elements=100)
    with pytest.raises(minidl.GradcheckError, match="random direction"):
        minidl.gradcheck(lambda t: _WrongSquare.apply(t), [x], max_elements=100)


def test_gradcheck_requires_float64():
    with pytest.raises(TypeError, match="float64"):
        minidl.gradcheck(lambda t: t * 2, [Tensor(np.ones(3, np.float32), requires_grad=True)])


class _TwoLayer(layers.Module):
    def __init__(self):
        super().__init__()
        self.first = layers.Linear(4, 3)
        self.body = layers.Sequential(layers.ReLU(), layers.Dropout(0.5), layers.Linear(3, 2))

    def forward(self, x):
        return self.body(self.first(x))


def test_module_registers_parameters_and_modes():
    model = _TwoLayer()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["first.weight", "first.bias", "body.2.weight", "body.2.bias"]
    assert model.num_parameters() == 4 * 3 + 3 + 3 * 2 + 2
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert model.body[1].training
    assert "Dropout(p=0.5)" in repr(model) and "(first): Linear(in_features=4" in repr(model)


def test_state_dict_round_trip_and_shape_errors():
    a, b = _TwoLayer(), _TwoLayer()
    state = a.state_dict()
    b.load_state_dict(state)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    state["first.weight"] = np.zeros((5, 4))
    with pytest.raises(ValueError, match="first.weight has shape"):
        b.load_state_dict(state)
    del state["first.weight"]
    with pytest.raises(KeyError, match="missing.*first.weight"):
        b.load_state_dict(state)


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Tensor(np.ones(2)).to("tpu")
    if not minidl.backend.cuda_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            Tensor(np.ones(2)).to("cuda")


def test_profile_times_each_op_forward_and_backward():
    x = Tensor(rand(3, 4), requires_grad=True)
    with minidl.profile() as prof:
        (x * x).sum().backward()
    assert prof.calls[("Mul", (3, 4), "forward")] == 1
    assert prof.calls[("Mul", (3, 4), "backward")] == 1
    assert prof.calls[("Sum", (3, 4), "backward")] == 1
    assert all(seconds >= 0 for seconds in prof.seconds.values())


def test_a_gradient_has_its_tensors_dtype_in_mixed_precision():
    """float32 * float64 computes in float64; each input's gradient comes back in its own
    dtype (as in PyTorch), the float32 one rounded from the float64 value."""
    a = Tensor(np.array([1.5, -2.0], dtype=np.float32), requires_grad=True)
    b = Tensor(np.array([0.1, 3.0], dtype=np.float64), requires_grad=True)
    y = (a * b + a).sum()
    assert y.data.dtype == np.float64
    y.backward()
    assert a.grad.data.dtype == np.float32 and b.grad.data.dtype == np.float64
    np.testing.assert_array_equal(a.grad.data, (np.array([0.1, 3.0]) + 1).astype(np.float32))
    np.testing.assert_array_equal(b.grad.data, [1.5, -2.0])
