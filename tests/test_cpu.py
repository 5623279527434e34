"""minidl.cpu: how CPU kernels and matrix products are spread over minidl's threads."""
import contextlib
import threading

import numpy as np
import pytest

from minidl import cpu


@pytest.fixture
def threads():
    """Set minidl's thread count for one test and put it back afterwards."""
    previous = cpu.num_threads()
    yield cpu.set_num_threads
    cpu.set_num_threads(previous)


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("n_items", [1, 5, 64, 1000])
def test_run_items_covers_every_item_once(threads, count, n_items):
    threads(count)
    seen = np.zeros(n_items, np.int64)
    names = set()
    lock = threading.Lock()

    def work(first, stop):
        with lock:
            seen[first:stop] += 1
            names.add(threading.current_thread().name)

    cpu.run_items(work, n_items, n_elements=1 << 20)
    assert seen.tolist() == [1] * n_items
    assert 1 <= len(names) <= min(count, n_items)


def test_run_items_keeps_small_work_on_the_calling_thread(threads):
    threads(2)
    names = []
    cpu.run_items(lambda first, stop: names.append(threading.current_thread().name), 100,
                  n_elements=cpu.SERIAL_BELOW - 1)
    assert names == [threading.current_thread().name]


@cpu.kernel
def _square_kernel(first, stop, x, y):
    # y[i] = x[i]^2; one iteration owns one element.
    for i in range(first, stop):
        y[i] = x[i] * x[i]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_kernel_launch_computes_every_item(threads, count):
    threads(count)
    x = np.random.default_rng(0).standard_normal(100_003)
    y = np.full_like(x, np.nan)
    _square_kernel(x.size, x, y)
    np.testing.assert_array_equal(y, x * x)


# (L, M, K, N): one product cut along its columns or its rows, a long inner dimension (conv1's
# dW), a stack handed out whole, a stack of two cut into pieces, a tiny product, empty ones.
SHAPES = [(1, 96, 363, 4000), (1, 4000, 200, 32), (1, 363, 20000, 96), (72, 24, 30, 50),
          (2, 64, 70, 500), (1, 3, 4, 5), (1, 0, 8, 9), (3, 5, 0, 7)]


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_many_equals_numpy(threads, count, shape, dtype):
    threads(count)
    rng = np.random.default_rng(1)
    count_, rows, depth, columns = shape
    a = rng.standard_normal((count_, rows, depth)).astype(dtype)
    b = rng.standard_normal((count_, columns, depth)).astype(dtype).transpose(0, 2, 1)  # a view
    out = np.full((count_, rows, columns), np.nan, dtype)
    cpu.matmul_many(a, b, out)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance * max(depth, 1))


def test_matmul_returns_a_new_contiguous_array():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 60)), rng.standard_normal((40, 60)).T
    out = cpu.matmul(a, b)
    assert out.flags.c_contiguous and out.shape == (50, 40)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def test_large_products_run_with_one_blas_thread(threads, monkeypatch):
    """BLAS's own threads would spin after each product and take the cores from the kernels
    that follow: every product that is not tiny runs inside single_threaded_blas."""
    threads(2)
    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(cpu, "single_threaded_blas", recording)
    a, b = np.ones((1, 200, 300)), np.ones((1, 300, 400))
    cpu.matmul_many(a, b, np.empty((1, 200, 400)))
    assert entered == [True]
    cpu.matmul_many(np.ones((1, 2, 2)), np.ones((1, 2, 2)), np.empty((1, 2, 2)))
    assert entered == [True]  # a tiny product goes straight to BLAS


def test_single_threaded_blas_limits_blas_to_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with cpu.single_threaded_blas():
        inside = [p["num_threads"] for p in threadpoolctl.threadpool_info()
                  if p["user_api"] == "blas"]
    assert inside and all(n == 1 for n in inside)
