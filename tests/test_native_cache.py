"""The native kernels' cache (`pyfastopt/native_build.py`) as an attacker and a careless user see
it: a library is loaded only from a private folder, only when it is this user's alone and matches
the digest its compiler wrote; everything else is compiled again, into a private temporary folder
where the cache is not private, or left to the torch paths, with one warning that says why. A
planted library's constructor never runs; a damaged one never loads; a bad `CC`, a hanging or
failing compiler and a library missing a kernel fall back instead of crashing or retrying at
every start; a good cached kernel needs no compiler; concurrent first uses all succeed.

Most runs are separate processes that load `native_build.py` alone (no torch: ~0.1 s each), so a
library that crashes the loader fails one test instead of the session. Most compiles are a fake
compiler script that copies a kernel compiled once per session, so cache tests cost no gcc time.
Scenarios that need another user's files run as root (chown to uid 65534); the chmod-based ones
run for any user."""
import ctypes
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import pyfastopt as po
from helpers import native_off
from pyfastopt import native, native_build

pytestmark = pytest.mark.skipif(native_build.find_compiler() is None,
                                reason="no C compiler on PATH")

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534
root_only = pytest.mark.skipif(not IS_ROOT, reason="planting another user's files needs root")

RUNNER = textwrap.dedent("""
    import importlib.util, json, sys, warnings
    spec = importlib.util.spec_from_file_location("native_build", sys.argv[1])
    nb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = nb.load()
    print(json.dumps({"loaded": lib is not None,
                      "abi": lib.pfo_abi_version() if lib is not None else None,
                      "info": nb.compile_info,
                      "warnings": [str(w.message) for w in caught]}))
""")


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="session")
def golden(tmp_path_factory):
    "The real kernel library, compiled once (by native_build itself) for the session."
    d = tmp_path_factory.mktemp("golden")
    src = native_build.source_text()
    out = str(d / "kernels.so")
    digest = native_build._compile(native_build.find_compiler(), src, out)
    assert digest == sha256_of(out)
    return out


@pytest.fixture(scope="session")
def so_name():
    return f"pyfastopt_kernels_{native_build._key(native_build.source_text())}.so"


def write_exe(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def fake_cc(tmp_path, golden):
    """A compiler script that copies the golden library to its `-o` argument (plus `extra`
    shell) and logs each call; returns (command, call_count)."""
    log = tmp_path / "cc_calls.log"

    def make(name="fake-cc", extra="", body=None):
        body = body or f'cp "{golden}" "$out"\n{extra}'
        script = write_exe(tmp_path / name, "#!/bin/sh\n" f'echo call >> "{log}"\n'
                           'out=\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\n'
                           + body)
        return script
    make.calls = lambda: len(log.read_text().splitlines()) if log.exists() else 0
    return make


@pytest.fixture
def cache(tmp_path):
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    return d


def run_build(cache_dir, cc=None, path_env=None, module=None, timeout=120, **env):
    "Load the library in a fresh process with only native_build imported; its report as a dict."
    full = {k: v for k, v in os.environ.items()
            if k != "CC" and not k.startswith("PYFASTOPT_")}
    full["PYFASTOPT_CACHE"] = str(cache_dir)
    if cc is not None:
        full["CC"] = cc
    if path_env is not None:
        full["PATH"] = path_env
    full.update(env)
    r = subprocess.run([sys.executable, "-c", RUNNER, module or native_build.__file__],
                       env=full, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"the loading process died ({r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def publish(cache_dir, so_name, lib_path, digest=None):
    "Put `lib_path` into the cache as the kernel, with a digest beside it (its own by default)."
    dst = os.path.join(cache_dir, so_name)
    shutil.copyfile(lib_path, dst)
    os.chmod(dst, 0o700)
    with open(dst + ".sha256", "w") as f:
        f.write(f"{digest or sha256_of(lib_path)}  {so_name}\n")
    os.chmod(dst + ".sha256", 0o600)
    return dst


def assert_published_golden(cache_dir, so_name, golden):
    dst = os.path.join(cache_dir, so_name)
    with open(dst, "rb") as a, open(golden, "rb") as b:
        assert a.read() == b.read()
    with open(dst + ".sha256") as f:
        assert f.read().split()[0] == sha256_of(dst)
    st = os.stat(dst)
    assert st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0


# --- a fresh cache, a good cached kernel --------------------------------------------------------

def test_fresh_cache_private_verified_and_reused_without_compiler(tmp_path, so_name):
    "First use compiles (the real compiler) into a 0700 folder; the parents keep normal"
    " permissions; the digest is the file's sha256; nothing else is left. Later uses load it"
    " without compiling, with no compiler on PATH and with a CC that does not exist."
    cache_dir = tmp_path / "home" / ".cache" / "pyfastopt"
    umask = os.umask(0o022)
    os.umask(umask)
    r = run_build(cache_dir)
    assert r["loaded"] and r["abi"] == native_build.ABI_VERSION and r["info"]["compiled"] \
        and not r["warnings"]
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
    for parent in (tmp_path / "home", tmp_path / "home" / ".cache"):
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o777 & ~umask
    assert sorted(os.listdir(cache_dir)) == [so_name, so_name + ".sha256"]
    so = cache_dir / so_name
    assert (cache_dir / (so_name + ".sha256")).read_text().split()[0] == sha256_of(so)
    assert os.stat(so).st_uid == os.geteuid() and os.stat(so).st_mode & 0o077 == 0
    mtime = os.stat(so).st_mtime_ns

    empty_bin = tmp_path / "empty_bin"
    empty_bin.mkdir()
    for env in ({}, {"path_env": str(empty_bin)}, {"cc": "/nonexistent/cc"},
                {"path_env": str(empty_bin), "cc": "/nonexistent/cc"}):
        r = run_build(cache_dir, **env)
        assert r["loaded"] and r["abi"] == native_build.ABI_VERSION and not r["info"]["compiled"], env
        assert not r["warnings"], env
    assert os.stat(so).st_mtime_ns == mtime


def test_no_compiler_on_path_is_really_none(tmp_path, monkeypatch):
    "The environment the test above relies on: an empty PATH finds no compiler."
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert native_build.find_compiler() is None


# --- damaged cache ------------------------------------------------------------------------------

def truncate(n):
    def cut(path):
        with open(path, "r+b") as f:
            f.truncate(n)
    return cut


def scribble(path):
    "64 random bytes in the middle of the file."
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(64))


def drop_digest(path):
    os.unlink(path + ".sha256")


def garbage_digest(path):
    with open(path + ".sha256", "w") as f:
        f.write("not a digest\n")


def other_digest(path):
    with open(path + ".sha256", "w") as f:
        f.write(hashlib.sha256(b"something else").hexdigest() + "\n")


DAMAGE = {"cut_1k": truncate(1024), "cut_10k": truncate(10 * 1024),
          "cut_50k": truncate(50 * 1024), "random_middle": scribble, "no_digest": drop_digest,
          "garbage_digest": garbage_digest, "other_digest": other_digest}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cached_kernel_is_rebuilt_not_loaded(damage, cache, so_name, golden, fake_cc):
    "The loader recomputes the digest: a truncated or scribbled file (SIGBUS/SIGILL at the first"
    " step before) or a missing/wrong digest means a compile, and the cache is repaired."
    dst = publish(cache, so_name, golden)
    DAMAGE[damage](dst)
    r = run_build(cache, cc=fake_cc())
    assert r["loaded"] and r["abi"] == native_build.ABI_VERSION and r["info"]["compiled"]
    assert fake_cc.calls() == 1
    assert not r["warnings"]                         # damage is repaired, quietly
    assert any("digest" in n for n in r["info"]["notes"]), r["info"]["notes"]
    assert_published_golden(cache, so_name, golden)
    r = run_build(cache, cc=fake_cc())              # repaired: loaded, no second compile
    assert r["loaded"] and not r["info"]["compiled"] and fake_cc.calls() == 1


# --- planted libraries ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """A library whose constructor writes a marker file when it is loaded; it has the ABI
    function, so only the checks stand between it and this process. Returns (lib, marker)."""
    d = tmp_path_factory.mktemp("planted")
    marker = d / "constructor_ran"
    src = d / "planted.c"
    src.write_text(textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void planted(void) {{
            FILE *f = fopen("{marker}", "w");
            if (f) {{ fputs("ran\\n", f); fclose(f); }}
        }}
        int pfo_abi_version(void) {{ return 1; }}
    """))
    lib = d / "planted.so"
    subprocess.run([*native_build.find_compiler(), "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True, capture_output=True, timeout=120)
    return str(lib), marker


def test_planted_library_would_run_if_loaded(planted):
    "The marker works: loading the planted library does write it (in a throwaway process)."
    lib, marker = planted
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({lib!r})"], check=True,
                   timeout=60)
    assert marker.exists()
    marker.unlink()


def chown_nobody(path):
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def symlink_to(target):
    def swap(path):
        os.unlink(path)
        os.symlink(target, path)
    return swap


# (what to do to the cache after publishing the planted library with its correct digest,
#  root needed, the expected warning text or None for a quiet rebuild, compiled privately)
PLANTS = {
    "file_of_other_user": (lambda c, so: chown_nobody(so), True, f"owned by uid {NOBODY}", False),
    "digest_of_other_user": (lambda c, so: chown_nobody(so + ".sha256"), True,
                             f"owned by uid {NOBODY}", False),
    "file_group_writable": (lambda c, so: os.chmod(so, 0o770), False, "writable by group", False),
    "file_world_writable": (lambda c, so: os.chmod(so, 0o757), False, "writable by others",
                            False),
    "file_is_symlink": (None, False, "cannot be opened safely", False),
    "no_digest": (lambda c, so: os.unlink(so + ".sha256"), False, None, False),
    "folder_group_writable": (lambda c, so: os.chmod(c, 0o770), False,
                              "is writable by group", True),
    "folder_sticky_world_writable": (lambda c, so: os.chmod(c, 0o1777), False,
                                     "is writable by group and others", True),
    "folder_of_other_user": (lambda c, so: chown_nobody(c), True, f"owned by uid {NOBODY}",
                             True),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_planted_library_never_runs(plant, tmp_path, cache, so_name, golden, fake_cc, planted):
    "A library planted under the kernel's name, with the right digest, in a cache or a file"
    " another user could have written: its constructor does not run (no marker); the kernels"
    " are compiled again (into a private temporary folder where the folder is not private)."
    change, needs_root, warning, private_tmp = PLANTS[plant]
    if needs_root and not IS_ROOT:
        pytest.skip("planting another user's files needs root")
    lib, marker = planted
    marker.unlink(missing_ok=True)          # left by an earlier failure: not this test's
    so = publish(cache, so_name, lib)
    if plant == "file_is_symlink":
        target = tmp_path / "elsewhere.so"
        shutil.copyfile(lib, target)
        change = lambda c, p: symlink_to(str(target))(p)   # noqa: E731
    change(str(cache), so)
    r = run_build(cache, cc=fake_cc())
    assert not marker.exists(), "the planted library's constructor ran"
    assert r["loaded"] and r["abi"] == native_build.ABI_VERSION and r["info"]["compiled"], r
    assert fake_cc.calls() == 1
    if warning is None:
        assert not r["warnings"]
    else:
        assert len(r["warnings"]) == 1 and warning in r["warnings"][0], r["warnings"]
    assert r["info"]["private_tmp"] is private_tmp
    if private_tmp:
        assert "not private" in r["warnings"][0] and str(cache) in r["warnings"][0]
        assert not os.path.exists(r["info"]["cache"])        # removed once loaded
        assert os.path.getsize(so) == os.path.getsize(lib)      # the planted file is untouched
    else:
        assert_published_golden(cache, so_name, golden)         # replaced by this user's build


@pytest.mark.parametrize("parent_mode, trusted", [(0o777, False), (0o775, False), (0o1777, True),
                                                  (0o755, True)],
                         ids=["world_writable", "group_writable", "sticky", "private"])
def test_parents_checked_like_ssh(parent_mode, trusted, tmp_path, so_name, golden, fake_cc,
                                  planted):
    "A folder above the cache that others may write (and is not sticky) could have the cache"
    " replaced: refused. A sticky one (as /tmp) or a private one is fine."
    lib, marker = planted
    marker.unlink(missing_ok=True)
    parent = tmp_path / "shared"
    parent.mkdir()
    cache_dir = parent / "cache"
    cache_dir.mkdir(mode=0o700)
    so = publish(cache_dir, so_name, golden)
    parent.chmod(parent_mode)
    r = run_build(cache_dir, cc=fake_cc())
    assert r["loaded"] and r["abi"] == native_build.ABI_VERSION
    if trusted:
        assert not r["info"]["compiled"] and not r["warnings"] and fake_cc.calls() == 0
    else:
        assert r["info"]["compiled"] and r["info"]["private_tmp"] and fake_cc.calls() == 1
        assert len(r["warnings"]) == 1 and f"{parent}, above it, is writable" in r["warnings"][0]
    # and a planted library under an untrusted parent never runs
    if not trusted:
        publish(cache_dir, so_name, lib)
        r = run_build(cache_dir, cc=fake_cc())
        assert r["loaded"] and not marker.exists()
    assert os.path.exists(so)


@root_only
def test_parent_of_other_user_refused(tmp_path, so_name, golden, fake_cc):
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    cache_dir = parent / "cache"
    cache_dir.mkdir(mode=0o700)
    publish(cache_dir, so_name, golden)
    chown_nobody(parent)
    r = run_build(cache_dir, cc=fake_cc())
    assert r["loaded"] and r["info"]["private_tmp"] and fake_cc.calls() == 1
    assert f"{parent}, above it, is owned by uid {NOBODY}" in r["warnings"][0]


# --- missing symbols ------------------------------------------------------------------------------

@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    "native_build as in a new process, with its cache in tmp (restored after the test)."
    monkeypatch.setattr(native_build, "_lib", None)
    monkeypatch.setattr(native_build, "_warned", False)
    monkeypatch.setattr(native_build, "compile_info", {})
    for k in ("CC", "PYFASTOPT_RECOMPILE", "PYFASTOPT_COMPILE_TIMEOUT", "PYFASTOPT_NATIVE"):
        monkeypatch.delenv(k, raising=False)
    d = tmp_path / "fresh_cache"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("PYFASTOPT_CACHE", str(d))
    return d


def test_library_missing_a_kernel_falls_back(fresh_loader, tmp_path, so_name):
    "A verified library that lacks a kernel symbol: one warning naming it, the torch paths"
    " (same numbers as with the kernels off), no AttributeError at the step."
    src = tmp_path / "partial.c"
    src.write_text(f"int pfo_abi_version(void) {{ return {native_build.ABI_VERSION}; }}\n"
                   "void pfo_sgd_f32(void) {}\nvoid pfo_sgd_f64(void) {}\n")
    lib = tmp_path / "partial.so"
    subprocess.run([*native_build.find_compiler(), "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True, capture_output=True, timeout=120)
    publish(fresh_loader, so_name, str(lib))
    ctypes.CDLL(str(lib)).pfo_sgd_f32            # the symbols it has are there: a real test

    def train():
        g = torch.Generator().manual_seed(0)
        ps = [torch.randn(50, generator=g).requires_grad_() for _ in range(3)]
        opt = po.Adam(ps, lr=0.01, wd=0.1)
        for _ in range(5):
            for p in ps:
                p.grad = torch.randn(50, generator=g)
            opt.step()
        return ps, opt
    with pytest.warns(RuntimeWarning) as caught:
        ps, opt = train()
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "lacks a kernel" in msgs[0] and "pfo_rmsprop_f32" in msgs[0], msgs
    assert "native CPU kernels unavailable" in msgs[0]
    assert native.load() is None and not native.available()
    assert not any(isinstance(b.kernel, native.NativeKernel) for b in opt._plan.buckets)
    with native_off(), warnings.catch_warnings():
        warnings.simplefilter("error")
        ref, _ = train()
    for a, b in zip(ps, ref):
        assert torch.equal(a, b)


def test_library_lacking_abi_function_not_used(fresh_loader, tmp_path, so_name):
    src = tmp_path / "empty.c"
    src.write_text("int unrelated(void) { return 0; }\n")
    lib = tmp_path / "empty.so"
    subprocess.run([*native_build.find_compiler(), "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True, capture_output=True, timeout=120)
    publish(fresh_loader, so_name, str(lib))
    with pytest.warns(RuntimeWarning, match="lacks the symbol pfo_abi_version"):
        assert native.load() is None


# --- compilers ------------------------------------------------------------------------------------

def test_cc_that_does_not_exist_is_named_not_replaced(cache, so_name):
    "CC=/nonexistent/cc: a warning naming CC; the system cc is not used instead."
    r = run_build(cache, cc="/nonexistent/cc")
    assert not r["loaded"]
    assert len(r["warnings"]) == 1 and "CC='/nonexistent/cc'" in r["warnings"][0]
    assert os.listdir(cache) == []


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_hanging_compiler_times_out_and_is_killed(cache, tmp_path, fake_cc):
    "A compiler that hangs (here: sleeps, in a child) is stopped after PYFASTOPT_COMPILE_TIMEOUT"
    " seconds, children included; the failure is remembered."
    pids = tmp_path / "pids"
    cc = fake_cc(body=f'sleep 300 &\necho $$ $! > "{pids}"\nwait\n')
    r = run_build(cache, cc=cc, PYFASTOPT_COMPILE_TIMEOUT="1", timeout=100)
    assert not r["loaded"]
    assert "did not finish within 1 s" in r["warnings"][0]
    assert "PYFASTOPT_COMPILE_TIMEOUT" in r["warnings"][0]
    for pid in pids.read_text().split():
        assert not alive(int(pid)), f"compiler process {pid} left running"
    r = run_build(cache, cc=cc, PYFASTOPT_COMPILE_TIMEOUT="1", timeout=100)
    assert not r["loaded"] and fake_cc.calls() == 1 and "not retried" in r["warnings"][0]


def test_bad_timeout_value_uses_default(cache, fake_cc):
    r = run_build(cache, cc=fake_cc(), PYFASTOPT_COMPILE_TIMEOUT="soon")
    assert r["loaded"]
    assert len(r["warnings"]) == 1 and "PYFASTOPT_COMPILE_TIMEOUT='soon'" in r["warnings"][0]


def test_failed_compile_remembered_until_something_changes(cache, tmp_path, fake_cc, golden,
                                                           so_name):
    "A failed compile is not retried at the next start; PYFASTOPT_RECOMPILE=1, another compiler,"
    " a changed compiler binary or a changed source (another key) retry it."
    failing = fake_cc(body='echo "error: broken toolchain" >&2\nexit 1\n')
    r = run_build(cache, cc=failing)
    assert not r["loaded"] and fake_cc.calls() == 1
    assert "broken toolchain" in r["warnings"][0]
    markers = [f for f in os.listdir(cache) if f.endswith(".failed")]
    assert len(markers) == 1 and "broken toolchain" in (cache / markers[0]).read_text()
    r = run_build(cache, cc=failing)
    assert not r["loaded"] and fake_cc.calls() == 1                  # not retried
    assert "not retried" in r["warnings"][0] and "PYFASTOPT_RECOMPILE=1" in r["warnings"][0]
    r = run_build(cache, cc=failing, PYFASTOPT_RECOMPILE="1")
    assert not r["loaded"] and fake_cc.calls() == 2                  # forced
    other = fake_cc(name="other-cc", body="exit 1\n")
    r = run_build(cache, cc=other)
    assert not r["loaded"] and fake_cc.calls() == 3                  # another compiler
    # another key: the same module with a changed source next to it
    pkg = tmp_path / "pkg"
    (pkg / "csrc").mkdir(parents=True)
    shutil.copy(native_build.__file__, pkg / "native_build.py")
    shutil.copy(native_build.HEADER, pkg / "csrc" / "pyfastopt_kernels.h")
    with open(native_build.SOURCE) as f:
        (pkg / "csrc" / "pyfastopt_kernels.c").write_text(f.read() + "\n/* changed */\n")
    r = run_build(cache, cc=failing, module=str(pkg / "native_build.py"))
    assert not r["loaded"] and fake_cc.calls() == 4
    # the same compiler path, fixed: a changed binary is another compiler, retried, and works
    fixed = fake_cc()
    assert fixed == failing
    r = run_build(cache, cc=fixed)
    assert r["loaded"] and r["info"]["compiled"] and fake_cc.calls() == 5
    assert_published_golden(cache, so_name, golden)
    assert len([f for f in os.listdir(cache) if f.endswith(".failed")]) == 3   # others' keys


def test_compiler_others_can_replace_is_not_run(cache, tmp_path, fake_cc):
    "Nothing runs from a place another user can write: a compiler in a shared folder is refused."
    shared = tmp_path / "shared_bin"
    shared.mkdir()
    cc = shutil.copy(fake_cc(), shared / "cc")
    shared.chmod(0o777)
    r = run_build(cache, cc=cc)
    assert not r["loaded"] and fake_cc.calls() == 0
    assert "not safe" in r["warnings"][0] and str(shared) in r["warnings"][0]


# --- concurrency ------------------------------------------------------------------------------

def test_twelve_concurrent_first_uses_all_succeed(cache, fake_cc, so_name):
    "12 processes compile at once (each build a little different: the race is real); all load"
    " their library, and the cache ends with one whole library and its matching digest."
    cc = fake_cc(extra='head -c 16 /dev/urandom >> "$out"\nsleep 0.3\n')
    env = {k: v for k, v in os.environ.items() if k != "CC" and not k.startswith("PYFASTOPT_")}
    env.update(PYFASTOPT_CACHE=str(cache), CC=cc)
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, native_build.__file__], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(12)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        r = json.loads(out.strip().splitlines()[-1])
        assert r["loaded"] and r["abi"] == native_build.ABI_VERSION and not r["warnings"], r
    assert sorted(os.listdir(cache)) == [so_name, so_name + ".sha256"]
    assert (cache / (so_name + ".sha256")).read_text().split()[0] == sha256_of(cache / so_name)
    r = run_build(cache, cc=cc)
    assert r["loaded"] and not r["info"]["compiled"]
