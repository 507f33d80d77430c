"""Building, checking and loading the native kernels' library (`csrc/pyfastopt_kernels.c`).

The source is compiled at first use with the system C compiler (`$CC`, else `cc`, `gcc` or
`clang`) into the kernel cache, `$PYFASTOPT_CACHE` (default `~/.cache/pyfastopt/`), under a name
keyed by a hash of the source, the flags and the CPU (not the compiler: a cached kernel needs no
compiler to be used). Loading a library runs its code, so a cached one is loaded only when

- the cache folder is this user's and writable by nobody else, and every folder above it is
  root's or this user's and writable by others only when sticky (as `/tmp` is): the rule `ssh`
  applies to `~/.ssh`. Otherwise the library is compiled into a private temporary folder for this
  process (removed once loaded), with one warning that says why;
- the file is this user's, a regular file writable by nobody else, and its sha256 is the one the
  compiling process wrote beside it (`<name>.so.sha256`). A damaged, truncated or unverified file
  is compiled again and replaced, never loaded.

A compile runs with a timeout (`$PYFASTOPT_COMPILE_TIMEOUT` seconds, default 60) and is published
by atomic renames, so concurrent first uses all succeed. A failed compile is remembered in the
cache for that key and compiler and not retried at every start (`PYFASTOPT_RECOMPILE=1` retries,
and also rebuilds a good cached kernel). Whatever fails leaves the torch paths (same numbers),
with one warning per process; `PYFASTOPT_NATIVE=0` turns the kernels off without one.
"""
import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings

__all__ = ["available", "enabled", "load", "find_compiler", "compile_info", "SOURCE", "CFLAGS",
           "source_text", "ABI_VERSION"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "pyfastopt_kernels.c")
HEADER = os.path.join(os.path.dirname(SOURCE), "pyfastopt_kernels.h")
CFLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c99", "-ffp-contract=off",
          "-fno-math-errno"]
ABI_VERSION = 2                # what `pfo_abi_version()` of the library must return
DEFAULT_COMPILE_TIMEOUT = 60.0

_lib = None            # the loaded library, False once loading failed (not retried)
_warned = False
_load_lock = threading.Lock()
compile_info = {}      # what the last load did: path, compiled (bool), seconds, cache, notes


class _Unusable(Exception):
    """A cached or fresh library that must not (or cannot) be used; the message says why.
    `kind`: "untrusted" (another user could have written it: warned about), "damaged" (compiled
    again), "broken" (verified, yet lacks what the kernels need: a compile would not help)."""

    def __init__(self, msg, kind):
        super().__init__(msg)
        self.kind = kind


def enabled():
    "Native kernels are on unless `PYFASTOPT_NATIVE=0` (read at each plan build)."
    return os.environ.get("PYFASTOPT_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler():
    """(command, None), or (None, why not). A `CC` that names no executable is an error, not a
    reason to use another compiler."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            cmd = shlex.split(cc)
        except ValueError as e:
            return None, f"CC={cc!r} cannot be parsed: {e}"
        path = shutil.which(cmd[0]) if cmd else None
        if path is None:
            return None, f"CC={cc!r} names no executable found (on PATH or as a path)"
        return [path, *cmd[1:]], None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path], None
    return None, "no C compiler found (set CC)"


def find_compiler():
    "The compiler command (a list), or None where `CC` names nothing runnable or none is on PATH."
    return _compiler()[0]


def _cache_dir():
    d = os.environ.get("PYFASTOPT_CACHE")
    return d if d else os.path.join(os.path.expanduser("~"), ".cache", "pyfastopt")


def _cpu_id():
    "What -march=native depends on: the CPU model and its flags."
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines()[:40]
                     if ln.startswith(("model name", "flags"))]
        return "\n".join(lines[:2])
    except OSError:
        return platform.processor()


def source_text():
    "The kernels' translation unit: the C file with its header inlined (one file to compile and hash)."
    with open(HEADER) as f:
        header = f.read()
    with open(SOURCE) as f:
        src = f.read()
    return src.replace('#include "pyfastopt_kernels.h"', header, 1)


def _key(src_text):
    "The cached library's name key: source, flags, ABI and CPU; not the compiler."
    parts = [f"abi{ABI_VERSION}", src_text, " ".join(CFLAGS), _cpu_id(), platform.machine(),
             sys.platform]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _compile_timeout(notes):
    raw = os.environ.get("PYFASTOPT_COMPILE_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_COMPILE_TIMEOUT
    try:
        t = float(raw)
    except ValueError:
        t = float("nan")
    if not t > 0 or t == float("inf"):
        notes.append((f"PYFASTOPT_COMPILE_TIMEOUT={raw!r} is not a positive number of seconds; "
                      f"used {DEFAULT_COMPILE_TIMEOUT:g}", True))
        return DEFAULT_COMPILE_TIMEOUT
    return t


def _warn(msg):
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"pyfastopt: native CPU kernels unavailable ({msg}); using the torch paths "
                      "(same numbers). Set PYFASTOPT_NATIVE=0 to silence.", RuntimeWarning,
                      stacklevel=4)


def _notice(msg):
    "The one warning of a load that worked but not as asked (e.g. an untrusted cache)."
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"pyfastopt: {msg}", RuntimeWarning, stacklevel=4)


# --- who may write where ---------------------------------------------------------------------

def _euid():
    return os.geteuid() if hasattr(os, "geteuid") else None


def _writers(mode):
    return " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                        if mode & bit)


def _parents_problem(path):
    """Why a folder above `path` lets another user replace what is below it, or None: each must
    be root's or this user's, and writable by group or others only when sticky (as /tmp is)."""
    uid = _euid()
    p = os.path.dirname(path)
    while True:
        try:
            st = os.stat(p)
        except OSError as e:
            return f"{p} cannot be checked ({e.strerror})"
        if st.st_uid not in (0, uid):
            return f"{p}, above it, is owned by uid {st.st_uid} (neither root nor uid {uid})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return f"{p}, above it, is writable by {_writers(st.st_mode)} and not sticky"
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def _dir_problem(path):
    """Why folder `path` (absolute, symlinks resolved) cannot be trusted with code this process
    loads, or None. The folder must be this user's and writable by nobody else (sticky does not
    help here: others could still plant new names in it), its parents as `_parents_problem`."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"{path} cannot be checked ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    return _owner_problem(st, path) or _parents_problem(path)


def _file_problem(st, path):
    "Why the file with `lstat`/`fstat` result `st` cannot be trusted, or None."
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    return _owner_problem(st, path)


def _owner_problem(st, path):
    "Why `path` (`stat` result `st`) is not this user's alone: another owner, or others may write."
    uid = _euid()
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by {_writers(st.st_mode)}"
    return None


def _make_private_dir(path):
    "Create the cache folder 0700 where missing; the folders above it with normal permissions."
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileExistsError):       # a concurrent first use made it
        os.mkdir(path, 0o700)


def _open_trusted(path):
    "An fd of `path`, refusing links and files that are not this user's alone."
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        problem = _file_problem(os.fstat(fd), path)
        if problem:
            raise _Unusable(problem, "untrusted")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sha256_fd(fd):
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)


def _read_digest(path):
    "The hex sha256 recorded in `path` (`sha256sum` format), checked like the library itself."
    fd = _open_trusted(path)
    try:
        text = os.read(fd, 4096).decode("ascii", "replace")
    finally:
        os.close(fd)
    digest = text.split()[0].lower() if text.split() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise _Unusable(f"{path} holds no sha256 digest", "damaged")
    return digest


def _write_atomic(path, text):
    "Write `text` to `path` through a private temporary file and a rename: never half-written."
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- compiling --------------------------------------------------------------------------------

def _compiler_id(cc):
    "Names the compiler for the failure memory: its command and the binary's identity."
    exe = os.path.realpath(cc[0])
    try:
        st = os.stat(exe)
        ident = f"{exe}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        ident = exe
    return hashlib.sha256("\0".join([*cc, ident]).encode()).hexdigest()[:12]


def _compiler_problem(cc):
    "Why the compiler binary may have been replaced by another user, or None."
    exe = os.path.realpath(cc[0])
    try:
        st = os.stat(exe)
    except OSError as e:
        return f"the compiler {exe} cannot be checked ({e.strerror})"
    if st.st_uid not in (0, _euid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"the compiler {exe} can be written by another user"
    problem = _parents_problem(exe)
    return f"the compiler {exe} is not safe: {problem}" if problem else None


def _run_compiler(cc, src, out, timeout):
    """Run `cc` in its own process group; on timeout kill the whole group, so that a compiler
    that started children does not keep this process waiting on their output."""
    cmd = [*cc, *CFLAGS, "-o", out, src, "-lm"]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)
    except OSError as e:
        raise RuntimeError(f"{' '.join(cc)} could not be run: {e}") from None
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):   # a child that left the group
            proc.communicate(timeout=5)                         # may hold the pipe: not waited for
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{' '.join(cc)} did not finish within {timeout:g} s "
                           "(PYFASTOPT_COMPILE_TIMEOUT)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cc)} failed: {output.strip()[-500:]}")


def _build(cc, src_text, workdir, timeout):
    "Compile into `workdir` (private); the library's path there."
    # fixed names, so that concurrent compiles of one key write the same bytes
    src = os.path.join(workdir, "pyfastopt_kernels.c")
    out = os.path.join(workdir, "pyfastopt_kernels.so")
    with open(src, "w") as f:
        f.write(src_text)
    _run_compiler(cc, src, out, timeout)
    os.chmod(out, 0o700)         # whatever the umask: writable by this user alone
    return out


@contextlib.contextmanager
def _folder_lock(folder, exclusive):
    """An advisory lock on the cache folder itself (no lock file): publishers hold it exclusive,
    loaders shared, so that a library and its digest are only ever seen as a pair (two processes
    publishing at once could otherwise leave one's library beside the other's digest)."""
    try:
        import fcntl
    except ImportError:                  # no flock: the digest check still refuses a mismatch
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                      # no folder: the caller meets that itself
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)                     # releases the lock


def _publish(built, out, digest):
    "Move a built library to `out`, then its digest beside it; each an atomic rename, together."
    with _folder_lock(os.path.dirname(out), exclusive=True):
        os.replace(built, out)
        _write_atomic(out + ".sha256", f"{digest}  {os.path.basename(out)}\n")


def _compile(cc, src_text, out, timeout=DEFAULT_COMPILE_TIMEOUT):
    """Compile `src_text` into `out` with its digest beside it, atomically (a concurrent compile
    of the same key replaces both, whole). Returns the sha256 of the library."""
    workdir = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(out))
    try:
        built = _build(cc, src_text, workdir, timeout)
        fd = os.open(built, os.O_RDONLY)
        try:
            digest = _sha256_fd(fd)
        finally:
            os.close(fd)
        _publish(built, out, digest)
        return digest
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- loading ----------------------------------------------------------------------------------

def _open_library(path, declare):
    "dlopen `path`, then check the ABI and every symbol `declare` needs; raises _Unusable."
    lib = ctypes.CDLL(path)
    lib._pyfastopt_declared = set()      # the `declare` functions run on it
    try:
        abi = lib.pfo_abi_version
    except AttributeError:
        raise _Unusable(f"{path} lacks the symbol pfo_abi_version", "broken") from None
    abi.argtypes, abi.restype = [], ctypes.c_int
    if abi() != ABI_VERSION:
        raise _Unusable(f"{path} has ABI version {abi()}, not {ABI_VERSION}", "broken")
    if declare is not None:
        _run_declare(lib, declare, path)
    return lib


def _run_declare(lib, declare, path):
    try:
        declare(lib)
    except AttributeError as e:          # ctypes' "undefined symbol"
        raise _Unusable(f"{path} lacks a kernel: {e}", "broken") from None
    lib._pyfastopt_declared.add(declare)


def _load_cached(path, declare):
    """The verified cached library, or None where there is none (raises _Unusable with the
    reason where there is one that must not be loaded)."""
    with _folder_lock(os.path.dirname(path), exclusive=False):
        return _load_cached_pair(path, declare)


def _load_cached_pair(path, declare):
    try:
        fd = _open_trusted(path)
    except FileNotFoundError:
        return None
    except OSError as e:                 # a link (O_NOFOLLOW), unreadable, ...
        raise _Unusable(f"{path} cannot be opened safely ({e.strerror})", "untrusted") from None
    try:
        try:
            expected = _read_digest(path + ".sha256")
        except FileNotFoundError:
            raise _Unusable(f"{path} has no digest beside it", "damaged") from None
        except OSError as e:
            raise _Unusable(f"{path}.sha256 cannot be opened safely ({e.strerror})",
                            "untrusted") from None
        if _sha256_fd(fd) != expected:
            raise _Unusable(f"{path} does not match its digest (damaged or truncated)",
                            "damaged")
    finally:
        os.close(fd)
    # the folder is private (checked): nobody else can swap the file between hash and dlopen
    return _open_library(path, declare)


class _Outcome:
    "What one load attempt found: the library (or None) and the notes that explain it."

    def __init__(self):
        self.lib = None
        self.notes = []          # (message, loud): loud ones are warned about even on success
        self.info = {}


def _obtain(declare=None):
    """Find and verify, or compile, the library. What was refused, repaired or failed goes into
    the notes; only the unexpected raises (and `load` turns that into a fallback too)."""
    res = _Outcome()
    notes = res.notes
    t0 = time.perf_counter()
    try:
        src = source_text()
    except OSError as e:
        notes.append((f"source missing: {e}", False))
        return res
    name = f"pyfastopt_kernels_{_key(src)}.so"
    requested = os.path.abspath(os.path.expanduser(_cache_dir()))
    try:
        _make_private_dir(requested)
        problem = None
    except OSError as e:
        problem = f"{requested} cannot be created ({e.strerror})"
    cache = os.path.realpath(requested)     # checked once, used from here on: links cannot move
    problem = problem or _dir_problem(cache)
    private_tmp = None
    if problem is None:
        path = os.path.join(cache, name)
        if not _flag("PYFASTOPT_RECOMPILE"):
            try:
                res.lib = _load_cached(path, declare)
            except _Unusable as e:
                # a file another user could have written is worth a warning; damage is repaired
                notes.append((f"not loaded: {e}", e.kind == "untrusted"))
                if e.kind == "broken":        # verified: a compile would give the same
                    return res
            if res.lib is not None:
                res.info = dict(path=path, compiled=False, cache=cache, private_tmp=False,
                                seconds=time.perf_counter() - t0)
                return res
    else:
        notes.append((f"the kernel cache is not private: {problem}", True))
        try:
            private_tmp = tempfile.mkdtemp(prefix="pyfastopt-")
        except OSError as e:
            notes.append((f"no private temporary folder ({e.strerror})", True))
            return res
        tmp_problem = _dir_problem(os.path.realpath(private_tmp))
        if tmp_problem:
            notes.append((f"the temporary folder is not private either: {tmp_problem}", True))
            shutil.rmtree(private_tmp, ignore_errors=True)
            return res
        cache = private_tmp
        path = os.path.join(cache, name)
    try:
        _compile_and_load(res, declare, src, cache, path, private_tmp is not None)
    finally:
        if private_tmp is not None:          # loaded (mapped) or failed: not needed any more
            shutil.rmtree(private_tmp, ignore_errors=True)
    if res.lib is not None:
        res.info = dict(path=path, compiled=True, cache=cache, private_tmp=private_tmp is not None,
                        seconds=time.perf_counter() - t0)
    return res


def _compile_and_load(res, declare, src, cache, path, temporary):
    notes = res.notes
    cc, why = _compiler()
    if cc is None:
        notes.append((why, "CC=" in why))
        return
    problem = _compiler_problem(cc)
    if problem:
        notes.append((problem, True))
        return
    failed = os.path.join(cache, os.path.basename(path)[:-3] + f".{_compiler_id(cc)}.failed")
    if not temporary and not _flag("PYFASTOPT_RECOMPILE"):
        try:
            fd = _open_trusted(failed)
            try:
                earlier = os.read(fd, 2000).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            notes.append((f"compiling failed before and is not retried ({earlier}); remembered "
                          f"in {failed}; set PYFASTOPT_RECOMPILE=1 to retry", False))
            return
        except (OSError, _Unusable):
            pass                # no readable record of a failure: compile, as without one
    timeout = _compile_timeout(notes)
    workdir = tempfile.mkdtemp(prefix=".build-", dir=cache)
    try:
        try:
            built = _build(cc, src, workdir, timeout)
        except (RuntimeError, OSError) as e:
            notes.append((str(e), False))
            if not temporary:
                with contextlib.suppress(OSError):
                    _write_atomic(failed, f"{' '.join(cc)}: {str(e)[:1500]}\n")
            return
        fd = _open_trusted(built)
        try:
            digest = _sha256_fd(fd)
        finally:
            os.close(fd)
        try:
            # load this process's own build from its private build folder, before publishing:
            # what runs here is what it compiled, whatever a concurrent compile publishes
            res.lib = _open_library(built, declare)
        except (_Unusable, OSError) as e:
            notes.append((f"the fresh build is unusable: {e}", False))
            return
        with contextlib.suppress(OSError):
            _publish(built, path, digest)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(failed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def load(declare=None):
    """The ctypes library (verified, or compiled on first use), or None when unavailable. With
    `declare(lib)`, the caller's symbol check and declarations: a symbol it misses means no
    library (one warning), not an error at the first step."""
    lib = _lib
    if lib is not None and (not lib or declare is None or declare in lib._pyfastopt_declared):
        return lib or None
    return _load_locked(declare)


def _load_locked(declare):
    global _lib
    with _load_lock:                     # threads starting at once: one compile
        if _lib is None:
            if sys.platform == "win32":
                _lib = False
                return None
            try:
                res = _obtain(declare)
            except Exception as e:  # noqa: BLE001 - whatever it is, the torch paths still work
                res = _Outcome()
                res.notes.append((f"{type(e).__name__}: {e}", False))
            compile_info.clear()
            compile_info.update(res.info, notes=[m for m, _ in res.notes])
            if res.lib is None:
                _lib = False
                _warn("; ".join(compile_info["notes"]) or "unknown reason")
                return None
            loud = [m for m, is_loud in res.notes if is_loud]
            if loud:
                where = ("into a private temporary folder for this process"
                         if res.info.get("private_tmp") else f"into {res.info['path']}")
                _notice(f"native CPU kernels compiled {where}: " + "; ".join(loud))
            _lib = res.lib
        elif _lib and declare is not None and declare not in _lib._pyfastopt_declared:
            try:
                _run_declare(_lib, declare, compile_info.get("path", "the kernel library"))
            except _Unusable as e:
                _lib = False
                _warn(str(e))
        return _lib or None


def available(declare=None):
    "Whether native kernels can run here (compiles on first call)."
    return enabled() and load(declare) is not None
