"""The installed package: Numba's cache from a read-only install, and thread settings."""
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import minidl

PACKAGE_DIR = os.path.dirname(os.path.abspath(minidl.__file__))


def _make_read_only(root):
    for folder, dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)


def test_numba_cache_dir_is_chosen_only_for_a_read_only_package(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    minidl.cpu.configure()
    assert "NUMBA_CACHE_DIR" not in os.environ  # writable: Numba caches beside the source
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert minidl.cpu.configure()["NUMBA_CACHE_DIR"] == "/somewhere/cache/minidl/numba"
    assert os.environ["NUMBA_CACHE_DIR"] == "/somewhere/cache/minidl/numba"


def test_configure_can_be_turned_off(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setenv("MINIDL_NO_CONFIGURE", "1")
    assert minidl.cpu.configure() == {}
    assert "NUMBA_CACHE_DIR" not in os.environ and "OMP_WAIT_POLICY" not in os.environ


def test_read_only_install_runs_and_caches_compiled_kernels_in_the_user_cache():
    """A copy of the package with no write permission. Root ignores permissions, so under
    root the child process is also told so through os.access, as a non-root user would be."""
    root = tempfile.mkdtemp(prefix="minidl-readonly-")
    try:
        site = os.path.join(root, "site")
        shutil.copytree(PACKAGE_DIR, os.path.join(site, "minidl"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
        _make_read_only(site)
        home = os.path.join(root, "home")
        os.mkdir(home)
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
        env.update(PYTHONPATH=site, HOME=home, PYTHONDONTWRITEBYTECODE="1")
        pretend = ("import os\n_access = os.access\n"
                   f"os.access = lambda p, m: False if str(p).startswith({site!r}) and m == os.W_OK "
                   "else _access(p, m)\n") if os.geteuid() == 0 else ""
        program = pretend + (
            "import os, numpy as np, minidl\n"
            "from minidl import ops\n"
            "assert not os.access(os.path.dirname(minidl.__file__), os.W_OK)\n"
            "x = minidl.Tensor(np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6))\n"
            "y = ops.max_pool2d(x, 2)\n"
            "assert y.shape == (2, 3, 3, 3) and float(y.data[0, 0, 0, 0]) == 7.0\n"
            "print(os.environ['NUMBA_CACHE_DIR'])\n")
        result = subprocess.run([sys.executable, "-c", program], env=env, cwd=root,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        cache_dir = result.stdout.strip().splitlines()[-1]
        assert cache_dir == os.path.join(home, ".cache", "minidl", "numba")
        cached = [f for _, _, files in os.walk(cache_dir) for f in files if f.endswith(".nbi")]
        assert cached, "Numba wrote no cache index into the user cache"
        in_package = [f for _, _, files in os.walk(site) for f in files if f.endswith((".nbi", ".nbc"))]
        assert not in_package, f"Numba wrote into the read-only package: {in_package}"
    finally:
        for folder, _, _ in os.walk(root):
            os.chmod(folder, stat.S_IRWXU)
        shutil.rmtree(root, ignore_errors=True)


def test_omp_wait_policy_defaults_to_passive_but_a_user_value_wins():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    program = "import os, minidl; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE"
    del env["OMP_WAIT_POLICY"]
    env["MINIDL_NO_CONFIGURE"] = "1"
    program = "import os, minidl; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "unset"


def _child(program, **env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMBA_OPT", "MINIDL_CPU_ALLOCATOR",
                        "MINIDL_NO_CONFIGURE")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)


def test_configure_sets_the_fast_defaults_before_numpy_and_numba_load():
    out = _child("import minidl, os; s = minidl.cpu.configure(); "
                 "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], os.environ['NUMBA_OPT'], s['allocator'])")
    assert out.stdout.split() == ["4", "2", "tuned"], out.stderr
    # NumPy first: OpenBLAS has read its settings already, so configure() leaves them alone.
    out = _child("import numpy, os, minidl; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset'))")
    assert out.stdout.strip() == "unset", out.stderr
    out = _child("import minidl; print(minidl.cpu.configure()['allocator'])", MINIDL_CPU_ALLOCATOR="system")
    assert out.stdout.strip() == "system", out.stderr
    out = _child("import minidl", MINIDL_CPU_ALLOCATOR="jemalloc")
    assert out.returncode != 0 and "MINIDL_CPU_ALLOCATOR must be 'tuned'" in out.stderr


def test_warmup_compiles_into_the_cache_a_later_process_uses(tmp_path):
    """python -m minidl.warmup fills an empty Numba cache with the kernels of the ops it
    exercises; the cache then holds their index files."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-m", "minidl.warmup", "max_pool", "dropout", "--jobs", "2"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "compiled 2 op families for float32" in out.stdout
    indexed = {f.split("-")[0] for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".nbi")}
    assert any(name.startswith("pool") for name in indexed), indexed
    assert any(name.startswith("dropout") for name in indexed), indexed
    bad = subprocess.run([sys.executable, "-m", "minidl.warmup", "fft"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no exercise named 'fft'" in bad.stderr
