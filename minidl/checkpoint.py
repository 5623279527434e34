"""Checkpoints: nested state (dicts, lists, numbers, strings, arrays) in one ``.npz`` file.

``save(path, model=..., optimizer=..., epoch=3)`` writes; ``load(path)`` gives the same
structure back, every array as a NumPy array -- so a checkpoint written on the GPU loads on a
machine without one, and ``Module.load_state_dict`` moves the values to wherever the model is.

The format: each array is stored as its own ``.npy`` member of the zip (``a0``, ``a1``, ...);
everything else is a JSON text (member ``tree``) in which an array appears as
``{"__array__": index}``. Loading uses ``allow_pickle=False``, so opening a checkpoint never
runs code from it.

Writing is atomic: the file is written under a temporary name in the same folder, flushed to
the disk (``fsync``) and then renamed over the old one (``os.replace``). A crash at any moment
leaves either the old checkpoint or the new one, never half a file. The temporary
(``.<name>.<8 random characters>.tmp``) is created exclusively, so a link planted in the folder
cannot redirect the write; one left by a ``kill -9`` is deleted by the next run in that folder
(``minidl.runs``). A failed write (disk full, no permission) raises ``SaveError``, an
``OSError`` whose one-line message names the file and says that the previous version is intact.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from . import backend

FORMAT = "minidl-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, or not a checkpoint)."""


class SaveError(OSError):
    """A file could not be written (disk full, no permission...). The message names the file
    and what was kept: the previous version is intact, and the temporary was removed."""

    def __init__(self, path, error):
        kept = (f"the previous {os.path.basename(path)} is intact" if os.path.exists(path)
                else "there was no earlier version")
        reason = error.strerror or str(error)
        super().__init__(error.errno, f"could not write {path}: {reason}; {kept}", path)
        self.path = path

    def __str__(self):
        return self.strerror


def _encode(value, arrays):
    """``value`` as JSON-able data; arrays are appended to ``arrays`` and referenced by index."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        arrays.append(np.ascontiguousarray(backend.to_numpy(value)))
        return {"__array__": len(arrays) - 1}
    if hasattr(value, "data") and hasattr(value, "requires_grad"):  # a Tensor
        return _encode(value.data, arrays)
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k.startswith("__") and k.endswith("__")
                                                              for k in value):
            return {k: _encode(v, arrays) for k, v in value.items()}
        # Keys that JSON cannot hold (ints, tuples) or that look like our markers.
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    raise TypeError(f"checkpoint.save: cannot store a {type(value).__name__} ({value!r:.80}); "
                    "store arrays, numbers, strings, None, and lists/tuples/dicts of them")


def _decode(value, arrays):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, arrays) for v in value["__tuple__"])
        if "__items__" in value:
            return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in value["__items__"]}
        return {k: _decode(v, arrays) for k, v in value.items()}
    return value


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); harmless to skip where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path, **state):
    """Write ``state`` (keyword arguments: nested dicts/lists/tuples of arrays, numbers,
    strings, None) to ``path`` atomically. CuPy arrays are copied to NumPy first."""
    path = os.fspath(path)
    arrays = []
    tree = {"format": FORMAT, "version": VERSION, "state": _encode(state, arrays)}
    members = {f"a{i}": a for i, a in enumerate(arrays)}
    members["tree"] = np.frombuffer(json.dumps(tree).encode("utf-8"), dtype=np.uint8)

    return write_atomically(path, lambda f: _write_npz(f, members))


def write_atomically(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename
    it over ``path``: a crash at any point leaves either the old file or the new one, never a
    half-written one. Used for checkpoints and for every picture the training loop redraws."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        # mkstemp creates the file exclusively (O_EXCL) under a fresh random name: a link
        # planted in the folder can never make this write land somewhere else.
        fd, temp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as error:
        raise SaveError(path, error) from error
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as error:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if isinstance(error, OSError) and not isinstance(error, SaveError):
            raise SaveError(path, error) from error
        raise
    _fsync_folder(folder)
    return path


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_npz(file, members):
    # A separate function so a test can make it fail half-way, as a crash would.
    np.savez(file, **members)


def load(path):
    """Read a checkpoint written by ``save``; every array comes back as a NumPy array.

    Raises ``FileNotFoundError`` if there is no such file and ``CheckpointError`` (naming the
    file) if it cannot be read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes); delete it or restore a copy")
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        # Not a zip: truncated, overwritten, or never a checkpoint. Said here, because NumPy
        # would answer that the file holds pickled data -- minidl never unpickles anything.
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated and cannot be read "
                              "(it is not a zip archive); delete it or restore a copy")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "tree" not in npz.files:
                raise CheckpointError(f"checkpoint {path!r} is not a minidl checkpoint "
                                      f"(it holds {sorted(npz.files)[:5]}, no 'tree')")
            tree = json.loads(npz["tree"].tobytes().decode("utf-8"))
            if not isinstance(tree, dict) or tree.get("format") != FORMAT:
                raise CheckpointError(f"checkpoint {path!r} is not a minidl checkpoint")
            if tree.get("version") != VERSION:
                raise CheckpointError(f"checkpoint {path!r} has format version {tree.get('version')}; "
                                      f"this minidl reads version {VERSION}")
            count = sum(1 for name in npz.files if name != "tree")
            arrays = [npz[f"a{i}"] for i in range(count)]
            return _decode(tree["state"], arrays)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, UnicodeDecodeError,
            zipfile.LargeZipFile) as error:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated and cannot be read "
                              f"({type(error).__name__}: {error}); delete it or restore a copy") from error
