"""The R package (r-pkg/) seen from the Python test suite.

Each test runs R in a subprocess (Rscript / R CMD), with RETICULATE_PYTHON set to the
interpreter running pytest, so R drives the same torch and pyfastopt. Subprocesses keep R and
reticulate out of this process (see tests/test_rpy2.py for R inside Python).

Skipped only when R itself (Rscript) is absent; PYFASTOPT_REQUIRE_PYTHON=1 makes the R side
fail instead of skipping if it cannot find the Python side.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RSCRIPT = shutil.which("Rscript")
pytestmark = pytest.mark.skipif(RSCRIPT is None, reason="R (Rscript) is not installed; run scripts/setup.sh")


def r_env(**extra):
    env = dict(os.environ)
    env.update(RETICULATE_PYTHON=sys.executable, PYFASTOPT_REQUIRE_PYTHON="1")
    # reticulate must start its own embedded Python from RETICULATE_PYTHON
    for k in ("PYTHONHOME", "PYTHONPATH"):
        env.pop(k, None)
    env.update(extra)
    return env


def run(cmd, timeout, **env):
    res = subprocess.run(cmd, cwd=ROOT, env=r_env(**env), capture_output=True, text=True,
                         timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def r_lib(tmp_path_factory):
    "The R package installed into a private library."
    lib = tmp_path_factory.mktemp("Rlib")
    run(["bash", "scripts/r-install.sh", str(lib)], timeout=300)
    return lib


def test_testthat_suite(r_lib):
    code = ('res <- testthat::test_dir("r-pkg/tests/testthat", package = "pyfastopt", '
            'load_package = "installed", reporter = "summary", stop_on_failure = TRUE); '
            'df <- as.data.frame(res); '
            'cat(sprintf("\\nTESTTHAT failed=%d skipped=%d passed=%d\\n", '
            'sum(df$failed) + sum(df$error), sum(df$skipped), sum(df$passed)))')
    out = run([RSCRIPT, "-e", code], timeout=600, R_LIBS=str(r_lib))
    line = [l for l in out.splitlines() if l.startswith("TESTTHAT ")][-1]
    counts = dict(kv.split("=") for kv in line.split()[1:])
    assert counts["failed"] == "0", out[-6000:]
    # with Python present nothing may skip (each export has tests that run)
    assert counts["skipped"] == "0", out[-6000:]
    assert int(counts["passed"]) > 200


def test_vignettes_knit_and_match_reference_page(tmp_path):
    out = run(["bash", "scripts/render-vignettes.sh"], timeout=600, PYFASTOPT_OUT=str(tmp_path))
    assert "All chunk outputs match the reference page." in out
    assert (tmp_path / "html" / "optimizer.html").stat().st_size > 10_000
    assert (tmp_path / "html" / "training.html").stat().st_size > 10_000
    # the chunks the scrape lost were run too
    for chunk in ("weight-decay", "l2-reg", "average-grad", "adam-step2", "lamb"):
        assert (tmp_path / "chunks" / "optimizer" / f"{chunk}.txt").exists(), chunk


def test_comparison_names_the_chunk_that_differs(tmp_path):
    "A wrong value in one chunk fails the comparison and names that chunk."
    vig = tmp_path / "vignettes"
    shutil.copytree(ROOT / "vignettes", vig, ignore=shutil.ignore_patterns("*.html", "*_files"))
    chunks = tmp_path / "chunks" / "optimizer"
    chunks.mkdir(parents=True)
    for f in (vig / "expected" / "optimizer").glob("*.txt"):
        shutil.copy(f, chunks / f.name)
    (chunks / "lamb.txt").write_text("tensor([0.7840, 1.7840, 2.7841])\n")
    res = subprocess.run([RSCRIPT, "scripts/r-compare-chunks.R", str(vig), str(tmp_path / "chunks")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "optimizer/lamb: printed output differs" in res.stdout
    assert "2.7841" in res.stdout
    # whitespace alone is no difference
    (chunks / "lamb.txt").write_text("  tensor([0.7840,   1.7840, 2.7840])\n\n")
    res = subprocess.run([RSCRIPT, "scripts/r-compare-chunks.R", str(vig), str(tmp_path / "chunks")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_r_cmd_build_and_check(tmp_path):
    out = run(["bash", "scripts/r-check.sh"], timeout=900, PYFASTOPT_OUT=str(tmp_path))
    assert "r-check: OK" in out
    log = (tmp_path / "check" / "pyfastopt.Rcheck" / "00check.log").read_text()
    assert "WARNING" not in log and "ERROR" not in log, log[-4000:]


def readme_install_lines():
    "The two shell lines of the README's R install block (the one after the r-install marker)."
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- r-install:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [l.split("#", 1)[0].strip() for l in block.splitlines()]
    return [l for l in lines if l]


def readme_quick_start():
    "The R quick start's code and the output the README shows for it."
    text = (ROOT / "README.md").read_text().split("## R quick start", 1)[1]
    block = text.split("```r\n", 1)[1].split("```", 1)[0]
    code = [l for l in block.splitlines() if not l.startswith("#>")]
    shown = [l[3:] for l in block.splitlines() if l.startswith("#> ")]
    return "\n".join(code), shown


def test_readme_install_from_scratch(tmp_path):
    """The README's two install lines, run as written in a fresh HOME with a private R library
    and no RETICULATE_PYTHON, then the quick start in a new R session prints what the README
    shows. pip resolves torch as configured on this machine (here: the local CPU wheel in
    PIP_FIND_LINKS; torch's small dependencies from pip's cache or index)."""
    lines = readme_install_lines()
    assert lines == ["R CMD INSTALL r-pkg", "Rscript -e 'pyfastopt::install_pyfastopt()'"], lines
    home, rlib = tmp_path / "home", tmp_path / "home" / "R" / "library"
    rlib.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RETICULATE_PYTHON", "PYTHONHOME", "PYTHONPATH", "WORKON_HOME",
                        "VIRTUAL_ENV", "R_LIBS", "PYFASTOPT_REQUIRE_PYTHON")}
    env.update(HOME=str(home), R_LIBS_USER=str(rlib),
               # pip's cache is the user's; keep the real one (a fresh HOME would have none)
               PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")))
    # pyenv's shims find their Python through $HOME/.pyenv unless told where it is
    if "PYENV_ROOT" not in env and (Path.home() / ".pyenv").is_dir():
        env["PYENV_ROOT"] = str(Path.home() / ".pyenv")
    # the project's .venv must not be the Python that creates the environment
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not p.startswith(str(ROOT / ".venv")))
    for line in lines:
        res = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
        assert res.returncode == 0, f"{line} failed:\n{(res.stdout + res.stderr)[-6000:]}"
    assert (rlib / "pyfastopt" / "python" / "pyproject.toml").exists()
    venv_python = home / ".virtualenvs" / "r-pyfastopt" / "bin" / "python"
    assert venv_python.exists()
    code, shown = readme_quick_start()
    res = subprocess.run([RSCRIPT, "-e", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    printed = [l for l in res.stdout.splitlines()]
    assert printed[-len(shown):] == shown, out[-3000:]
    # the installed Python package is the repository's, file for file
    site = subprocess.run([str(venv_python), "-c", "import pyfastopt, os; print(os.path.dirname(pyfastopt.__file__))"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    for f in (ROOT / "pyfastopt").glob("*.py"):
        assert (Path(site) / f.name).read_bytes() == f.read_bytes(), f.name


def test_pyproject_builds_without_warnings(tmp_path):
    "Building the wheel (as install_pyfastopt() does) prints no setuptools warning."
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)    # its "byte-compiling is disabled" notes are not ours
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                          str(tmp_path / "wheels"), str(ROOT)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    lines = [l for l in out.splitlines() if "arning" in l and "Location 'file:" not in l]
    assert lines == [], "\n".join(lines)
    wheel = next((tmp_path / "wheels").glob("pyfastopt-*.whl"))
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    # every file of the package is in the wheel: subpackages, the C source and its header
    want = {str(f.relative_to(ROOT)) for f in (ROOT / "pyfastopt").rglob("*")
            if f.is_file() and "__pycache__" not in f.parts}
    assert want - set(names) == set(), sorted(want - set(names))
    assert {"pyfastopt/csrc/pyfastopt_kernels.h", "pyfastopt/optimizers/lion.py"} <= set(names)
