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
