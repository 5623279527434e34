"""Module: the conveniences PyTorch users type without thinking (double/float/to(dtype),
apply, the tree walks, requires_grad_, zero_grad, parameters(recurse=...), Sequential
indexing), buffers, and load_state_dict from NumPy arrays, torch tensors and .pth files."""
import numpy as np
import pytest

import minidl
from minidl import layers


def small_model():
    return layers.Sequential(layers.Conv2d(2, 4, 3), layers.BatchNorm2d(4), layers.ReLU(),
                             layers.Flatten(), layers.Linear(4 * 4 * 4, 3))


def test_dtype_conversions_and_to():
    model = small_model()
    x = minidl.Tensor(np.random.default_rng(0).standard_normal((2, 2, 6, 6)))
    assert model.double() is model and model.dtype == np.float64
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model(x).dtype == np.float64
    assert minidl.gradcheck(lambda t: model(t), [minidl.Tensor(x.numpy(), requires_grad=True)],
                            max_elements=16)
    model.float()
    assert all(t.dtype == np.float32 for t in model.parameters() + model.buffers()[:2])
    assert model.to(np.float64).dtype == np.float64 and model.to("float32").dtype == np.float32
    assert model.to("cpu", np.float64).dtype == np.float64 and model.device == "cpu"
    with pytest.raises(TypeError, match="Sequential.to: dtype must be float32 or float64, got int32"):
        model.to(np.int32)


def test_tree_walks_apply_and_freezing():
    model = small_model()
    assert [type(m).__name__ for m in model.children()] == ["Conv2d", "BatchNorm2d", "ReLU",
                                                           "Flatten", "Linear"]
    assert [n for n, _ in model.named_modules()][:3] == ["", "0", "1"]
    assert len(list(model.modules())) == 6
    assert model.parameters(recurse=False) == [] and len(model[0].parameters(recurse=False)) == 2
    seen = []
    assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    assert seen[-1] == "Sequential" and seen[0] == "Conv2d"
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())
    model[4].requires_grad_()
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 2


def test_zero_grad_and_sequential_indexing():
    model = small_model()
    x = minidl.Tensor(np.ones((2, 2, 6, 6), np.float32))
    model(x).sum().backward()
    model.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert len(model) == 5 and isinstance(model[1], layers.BatchNorm2d) and model[-1] is model[4]
    head = model[3:]
    assert isinstance(head, layers.Sequential) and len(head) == 2 and head[1] is model[4]


def test_register_buffer():
    module = layers.Linear(3, 2)
    module.register_buffer("counts", np.zeros(2))
    module.register_buffer("scratch", np.ones(2), persistent=False)
    assert isinstance(module.counts, minidl.Tensor) and not module.counts.requires_grad
    module.counts = np.array([1.0, 2.0])  # assignment keeps it a buffer
    assert isinstance(module.counts, minidl.Tensor)
    assert list(module.state_dict()) == ["weight", "bias", "counts"]
    assert len(module.parameters()) == 2 and len(module.buffers()) == 2
    with pytest.raises(KeyError, match="'weight' is already a parameter"):
        module.register_buffer("weight", np.zeros(2))


def test_load_state_dict_from_torch_tensors_and_pth_file(tmp_path):
    torch = pytest.importorskip("torch")
    model = small_model()
    state = {name: torch.tensor(np.full(value.shape, 0.5, value.dtype))
             for name, value in model.state_dict().items()}
    model.load_state_dict(state)
    assert (model[0].weight.numpy() == 0.5).all() and model[1].num_batches_tracked.item() == 0
    path = tmp_path / "weights.pth"
    torch.save({name: t * 2 for name, t in state.items()}, path)
    model.load_state_dict(str(path))
    assert (model[4].bias.numpy() == 1.0).all()
    with pytest.raises(KeyError, match=r"missing \['4.bias'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "4.bias"})
    with pytest.raises(ValueError, match=r"0.weight has shape \(1,\) in the state"):
        model.load_state_dict(dict(state, **{"0.weight": np.zeros(1)}))
