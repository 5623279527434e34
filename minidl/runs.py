"""The run folder: one run per folder, a lock held for the run's life, the leftovers of a
killed run; and what a run is made of: its recipe, and where it ran.

``fit(out_dir=...)`` calls ``claim(out_dir, resume, overwrite)`` before it writes anything:

* **Lock.** ``out_dir/.minidl-run.lock`` is created (never through a symbolic link) and held
  with ``flock`` for as long as the run lasts; it records the PID, the host and the process's
  start time, and is deleted when the run ends. A second run in the same folder is refused,
  naming the holder. A lock left by a process that is gone (``kill -9``, a crash, a power
  cut) is noticed -- the ``flock`` is free, or the recorded PID is not running on this host --
  and taken over with a note. A lock written on another host cannot be checked from here: it
  is refused, naming the host, the PID and the file to delete once that run is known to be over.
  Claims are re-entrant within one process (an example holds its folder, then ``fit`` claims it
  again).
* **One run per folder.** A folder that already holds a run (``checkpoint.npz``, ``best.npz``
  or a non-empty ``metrics.jsonl``) is refused unless the run is resumed or ``overwrite`` says
  to replace it; overwriting deletes the previous run's files first and names them, so the
  two runs never mix.
* **Leftovers.** Temporaries of a save that was killed half-way (``.checkpoint.npz.*.tmp``:
  ``checkpoint.write_atomically`` names them ``.<file>.<8 random characters>.tmp``) are deleted,
  named with their size. Nobody else can be writing them: the lock is held.

``make_recipe`` and ``recipe_changes`` say what a resumed run must share with its checkpoint
(the optimiser's and schedule's settings, the batch size, what the caller adds).
``environment()`` is what a checkpoint records about the process that wrote it: versions,
thread settings and the number of processes that trained together. BLAS threads may split
sums differently, so a run resumed with other settings matches the uninterrupted one only to
float rounding (about 1e-7), not bitwise; ``fit`` warns when they differ.
"""
import json
import os
import platform
import re
import socket
import sys
import time

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: the PID and host in the file are the only lock
    fcntl = None

LOCK_NAME = ".minidl-run.lock"
# The files a run writes: a folder holding any of them holds a run.
RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png")
# What checkpoint.write_atomically leaves behind when killed: ".<name>.<mkstemp's 8 characters>.tmp".
STALE_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
THREAD_VARIABLES = ("MINIDL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS")


class RunFolderError(FileExistsError):
    """The output folder holds another run, or another process is using it."""


class RunLockedError(RunFolderError):
    """Another live process holds the folder's lock."""


def _note(message):
    print(f"minidl: {message}", file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------------
def _process_start(pid):
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a live
    process from a later one that got the same PID; None where it cannot be read."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # it exists but belongs to someone else (or cannot be asked): assume alive
    return True


def describe_owner(owner):
    """'PID 123 on host h (started 2026-12-01 10:00:00)' from a lock's record."""
    started = owner.get("started")
    when = time.strftime(" (started %Y-%m-%d %H:%M:%S)", time.localtime(started)) if started else ""
    return f"PID {owner.get('pid')} on host {owner.get('host')}{when}"


def owner_is_gone(owner):
    """Is the process a lock record names certainly not running? Only answerable on its host."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return True
    recorded, now = owner.get("process_start"), _process_start(pid)
    return recorded is not None and now is not None and recorded != now  # the PID was reused


# -- the lock -----------------------------------------------------------------------------------
class FolderLock:
    """An exclusive lock on a folder for this process's run; see the module docstring."""

    _held = {}  # realpath of the lock file -> FolderLock, for re-entrant claims in one process

    def __init__(self, path, fd):
        self.path, self.fd, self.count = path, fd, 1

    @classmethod
    def acquire(cls, folder):
        path = os.path.join(os.fspath(folder), LOCK_NAME)
        key = os.path.realpath(path)
        if key in cls._held:
            cls._held[key].count += 1
            return cls._held[key]
        fd = _open_locked(path)
        try:
            owner = _read_owner(fd)
            if owner and owner.get("pid") != os.getpid():
                # flock is free, yet a record is there: its writer was killed -- or runs on another
                # host over a file system whose locks do not reach here. Only the PID can tell.
                if not owner_is_gone(owner):
                    raise RunLockedError(_locked_message(folder, path, owner))
                _note(f"{path}: took over a stale lock of {describe_owner(owner)}, which is no "
                      "longer running")
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                      "process_start": _process_start(os.getpid()), "argv": sys.argv[:20]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        lock = cls(path, fd)
        cls._held[key] = lock
        return lock

    def release(self):
        self.count -= 1
        if self.count > 0:
            return
        FolderLock._held.pop(os.path.realpath(self.path), None)
        try:
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # before unlocking: a waiting process then sees a new file
        except OSError:
            pass
        os.close(self.fd)


def _open_locked(path):
    """Open (creating) the lock file without following a link, and flock it where the file
    system allows; raises RunLockedError when another process holds the flock."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as error:
            if os.path.islink(path):
                raise RunFolderError(f"{path} is a symbolic link; a run's lock file must be a plain "
                                     "file (delete the link)") from error
            raise
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise RunLockedError(_locked_message(os.path.dirname(path), path, owner)) from None
        except OSError:  # a file system without flock (some network mounts): PID and host decide
            return fd
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder deleted it between our open and our flock: lock the new one


def _read_owner(fd):
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return {"pid": None, "host": "(unreadable lock file)"}


def _locked_message(folder, path, owner):
    owner = owner or {}
    text = f"{folder} is in use by another run ({describe_owner(owner)})"
    if owner.get("host") not in (None, socket.gethostname()):
        text += f"; if that run is over, delete {path}"
    return text + "; wait for it to end or choose another output folder"


# -- the folder ---------------------------------------------------------------------------------
def existing_run_files(folder):
    """The files of a run that ``folder`` holds (an empty metrics.jsonl does not count)."""
    found = []
    for name in RUN_FILES:
        path = os.path.join(folder, name)
        if os.path.lexists(path) and not (name == "metrics.jsonl" and os.path.isfile(path)
                                          and os.path.getsize(path) == 0):
            found.append(name)
    return found


def remove_stale_temporaries(folder):
    """Delete what killed saves left in ``folder`` (never following links); returns
    [(name, bytes)]. Call it only while holding the folder's lock."""
    removed = []
    for entry in os.scandir(folder):
        if STALE_TEMPORARY.match(entry.name) and not entry.is_dir(follow_symlinks=False):
            size = entry.stat(follow_symlinks=False).st_size
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append((entry.name, size))
    return removed


def _megabytes(size):
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size} bytes"


class RunFolder:
    """A claimed output folder (see ``claim``): ``path``, ``files`` (name -> path), ``release()``;
    usable as a context manager. A folder the claim created is removed again at the release if
    nothing was written to it (a run that failed on its data leaves no empty folder behind)."""

    def __init__(self, path, lock, created=False):
        self.path, self.lock, self.created = path, lock, created
        self.files = {name: os.path.join(path, name) for name in RUN_FILES}

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            if self.created and self.lock_released_last():
                try:
                    os.rmdir(self.path)  # only if empty
                except OSError:
                    pass

    def lock_released_last(self):
        return os.path.realpath(os.path.join(self.path, LOCK_NAME)) not in FolderLock._held

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim(folder, resume=False, overwrite=False):
    """Make ``folder`` this process's run folder: create it, take its lock, delete stale
    temporaries, and check that it holds no other run -- unless ``resume`` (the run in it goes
    on) or ``overwrite`` (its files are deleted now, and named). Returns a ``RunFolder``.

    Raises ``RunLockedError`` if another process is running there and ``RunFolderError`` (with
    ``.files``) if it holds a run that neither flag allows to touch.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"output folder {folder} exists and is not a folder")
    created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        lock = FolderLock.acquire(folder)
    except BaseException:
        if created:
            os.rmdir(folder)
        raise
    try:
        removed = remove_stale_temporaries(folder)
        if removed:
            _note(f"{folder}: deleted {len(removed)} temporary file(s) left by a save that was "
                  "killed: " + ", ".join(f"{name} ({_megabytes(size)})" for name, size in removed))
        held = existing_run_files(folder)
        if held and lock.count == 1:
            checkpoint_there = "checkpoint.npz" in held
            if overwrite:
                for name in held:
                    os.unlink(os.path.join(folder, name))
                _note(f"{folder}: overwrite: deleted the previous run's {', '.join(held)}")
            elif not resume or not checkpoint_there:
                why = ("it holds no checkpoint.npz to resume from" if resume else
                       "resume it, or overwrite it")
                error = RunFolderError(f"{folder} already holds a run ({', '.join(held)}); {why}")
                error.files = held
                error.folder = folder
                raise error
    except BaseException:
        RunFolder(folder, lock, created).release()
        raise
    return RunFolder(folder, lock, created)


# -- what a run is: its recipe ---------------------------------------------------------------
# Entries of an optimiser's or schedule's state_dict that count what happened rather than
# configure what happens: they are not part of the recipe.
_COUNTERS = {"steps", "step", "epoch", "last_epoch", "best", "bad_epochs", "reductions", "base_lr",
             "num_bad_epochs", "cooldown_counter", "t"}


def _settings_of(component, prefix):
    """The scalar settings in ``component.state_dict()`` (numbers, strings, short number
    tuples), counters left out, under ``prefix``."""
    settings = {}
    for key, value in component.state_dict().items():
        if key in _COUNTERS:
            continue
        if value is None or isinstance(value, (bool, int, float, str, np.integer, np.floating)):
            settings[prefix + key] = value.item() if isinstance(value, np.generic) else value
        elif (isinstance(value, (tuple, list)) and len(value) <= 8
              and all(isinstance(v, (int, float)) for v in value)):
            settings[prefix + key] = list(value)
    return settings


def make_recipe(optimizer, scheduler, train_loader, given):
    """What a resumed run must share with its checkpoint: the optimiser's settings (``lr``,
    ``momentum``...), the schedule's (``scheduler.patience``...), the loader's batch size and
    the caller's ``given`` entries (JSON values: the model variant, the class names...)."""
    recipe = {"optimizer": type(optimizer).__name__}
    recipe.update(_settings_of(optimizer, ""))
    recipe["scheduler"] = None if scheduler is None else type(scheduler).__name__
    if scheduler is not None:
        recipe.update(_settings_of(scheduler, "scheduler."))
    batch_size = getattr(train_loader, "batch_size", None)
    if isinstance(batch_size, (int, np.integer)):
        recipe["batch_size"] = int(batch_size)
    for key, value in (given or {}).items():
        try:
            recipe[str(key)] = json.loads(json.dumps(value))  # tuples become lists, as when loaded
        except (TypeError, ValueError):
            raise TypeError(f"fit: recipe[{key!r}] must be a JSON value (number, string, list...), "
                            f"got a {type(value).__name__}") from None
    return recipe


def _normalised(value):
    return json.loads(json.dumps(value)) if isinstance(value, (tuple, list, dict)) else value


def recipe_changes(saved, current, compare_absent=()):
    """[(key, old, new)] for every entry that differs between two recipes (None: absent). A
    key that only one side has counts only if it is in ``compare_absent`` (the caller's own
    entries): an optimiser that gained a setting in a newer minidl does not block a resume."""
    missing = object()
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = _normalised(saved.get(key, missing)), _normalised(current.get(key, missing))
        if (old is missing or new is missing) and key not in compare_absent:
            continue
        if old != new:
            changes.append((key, None if old is missing else old, None if new is missing else new))
    return changes


def describe_changes(changes):
    """'lr 0.05 -> 0.5; momentum 0.9 -> 0.0'."""
    return "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)


# -- where a run ran -------------------------------------------------------------------------
def environment(processes=1):
    """Versions and thread settings of this process, and the number of ``processes`` training
    together (``minidl.distributed``), as a checkpoint records them."""
    from . import __version__, cpu

    record = {"python": platform.python_version(), "numpy": np.__version__, "minidl": __version__,
              "processes": int(processes),
              "threads": {name: os.environ.get(name) for name in THREAD_VARIABLES}}
    record["threads"]["minidl.cpu.num_threads()"] = cpu.num_threads()
    try:
        import numba
        record["numba"] = numba.__version__
    except ImportError:
        record["numba"] = None
    return record


def environment_differences(saved, current):
    """['numpy 2.4.6 -> 2.5.0', 'OPENBLAS_NUM_THREADS 2 -> 1', ...] between two records."""
    differences = []
    for key in ("minidl", "python", "numpy", "numba"):
        if saved.get(key) != current.get(key):
            differences.append(f"{key} {saved.get(key)} -> {current.get(key)}")
    # A run resumed on another number of processes splits each batch's sums differently.
    if saved.get("processes", 1) != current.get("processes", 1):
        differences.append(f"processes {saved.get('processes', 1)} -> {current.get('processes', 1)}")
    old, new = saved.get("threads") or {}, current.get("threads") or {}
    # Only what both records hold: an older minidl recorded Numba's thread count instead.
    for key in sorted(set(old) & set(new)):
        if old.get(key) != new.get(key):
            differences.append(f"{key} {old.get(key, 'unset') or 'unset'} -> {new.get(key) or 'unset'}")
    return differences
