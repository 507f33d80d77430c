#' Install the Python side of pyfastopt
#'
#' Creates a Python virtual environment and installs into it, with pip, the Python package
#' `pyfastopt` that this R package carries (the same version, under
#' `system.file("python", package = "pyfastopt")`) and so torch, which pip resolves for the
#' platform as usual. The default environment, `"r-pyfastopt"` in
#' [reticulate::virtualenv_root()], is one reticulate finds by itself: after a restart of R,
#' `library(pyfastopt)` uses it unless `RETICULATE_PYTHON` points elsewhere.
#'
#' An environment that already imports `torch` and `pyfastopt` is reused as it is (unless
#' `force = TRUE`), so calling this twice costs nothing. If the installation fails, an
#' environment this call created is removed again (reticulate would otherwise pick up an
#' environment without torch), and the error shows the end of pip's output.
#'
#' @param envname Name of a virtualenv (in [reticulate::virtualenv_root()]) or a path to one.
#' @param package What pip installs as pyfastopt: `NULL` for the copy bundled with this R
#'   package, or a path to a source checkout (the folder that holds `pyproject.toml`).
#' @param torch `NULL` to let pip choose torch from pyfastopt's requirement, or a pip
#'   requirement to pin it (e.g. `"torch==2.13.0"`).
#' @param index_url An extra package index for torch, e.g. PyTorch's CPU-only wheels
#'   `"https://download.pytorch.org/whl/cpu"` (much smaller than the default CUDA build on
#'   Linux); `NULL` for pip's configured indexes only.
#' @param python The Python (>= 3.9) that creates a new environment; `NULL` for `python3` on
#'   the `PATH`.
#' @param force Reinstall even when the environment already works.
#' @param dry_run Only return the plan (the environment and the pip arguments), without
#'   running anything.
#' @return Invisibly, the path of the environment's Python (a list describing the plan when
#'   `dry_run = TRUE`).
#' @export
#' @examples
#' install_pyfastopt(dry_run = TRUE)
#' \dontrun{
#' install_pyfastopt()
#' # CPU-only torch (Linux):
#' install_pyfastopt(index_url = "https://download.pytorch.org/whl/cpu")
#' # then restart R; or, for another environment:
#' Sys.setenv(RETICULATE_PYTHON = "/path/to/venv/bin/python")
#' }
install_pyfastopt <- function(envname = "r-pyfastopt", package = NULL, torch = NULL,
                              index_url = NULL, python = NULL, force = FALSE, dry_run = FALSE) {
  .string(envname, "envname", "a single environment name or path")
  if (!is.null(package)) .string(package, "package", "NULL or the path of a pyfastopt source folder")
  if (!is.null(torch)) .string(torch, "torch", "NULL or a pip requirement such as \"torch==2.13.0\"")
  if (!is.null(index_url)) .string(index_url, "index_url", "NULL or a URL")
  if (!is.null(python)) .string(python, "python", "NULL or the path of a Python")
  .flag(force, "force")
  .flag(dry_run, "dry_run")

  if (is.null(package)) package <- system.file("python", package = "pyfastopt")
  if (!nzchar(package) || !file.exists(file.path(package, "pyproject.toml")))
    .arg_error("package", "a folder with pyproject.toml (this installation of the R package has no bundled Python package; give the path of a pyfastopt checkout)", package)
  package <- normalizePath(package)

  env <- path.expand(if (grepl("[/\\\\]", envname)) envname else file.path(reticulate::virtualenv_root(), envname))
  env_python <- file.path(env, if (.Platform$OS.type == "windows") "Scripts/python.exe" else "bin/python")
  exists <- file.exists(env_python)
  works <- exists && .python_has_modules(env_python, c("torch", "pyfastopt"))
  pip_args <- c("-m", "pip", "install", "--disable-pip-version-check",
                if (force) "--force-reinstall",
                if (!is.null(index_url)) c("--extra-index-url", index_url),
                torch, package)
  plan <- list(envname = env, create = !exists, install = force || !works,
               packages = c(torch, package), pip_args = pip_args, python = env_python)
  if (dry_run) return(plan)
  if (!plan$install) {
    message("The environment '", env, "' already has torch and pyfastopt; nothing to do.")
    return(invisible(env_python))
  }

  created <- FALSE
  fail <- function(what, output) {
    if (created) unlink(env, recursive = TRUE)
    tail_out <- paste(utils::tail(output, 25), collapse = "\n")
    stop(sprintf("install_pyfastopt(): %s.%s\n%s", what,
                 if (created) paste0(" The new environment '", env, "' was removed again.") else "",
                 tail_out), call. = FALSE)
  }
  if (!exists) {
    if (is.null(python)) python <- Sys.which("python3")
    if (!nzchar(python) || !file.exists(python))
      .arg_error("python", "a Python >= 3.9 to create the environment with (none found on the PATH)", python)
    message("Creating the Python environment '", env, "'")
    out <- .run(python, c("-m", "venv", shQuote(env)))
    created <- TRUE
    if (!identical(attr(out, "status"), 0L) || !file.exists(env_python))
      fail(paste0("`", python, " -m venv` could not create the environment"), out)
  }
  message("Installing pyfastopt and torch into '", env, "' (pip; torch is large)")
  out <- .run(env_python, shQuote(pip_args))
  if (!identical(attr(out, "status"), 0L)) fail("pip could not install pyfastopt and torch", out)
  if (!.python_has_modules(env_python, c("torch", "pyfastopt")))
    fail("the environment still cannot import torch and pyfastopt", out)
  message("Done. Restart R, then library(pyfastopt) uses it (or set RETICULATE_PYTHON=",
          env_python, ").")
  invisible(env_python)
}

.string <- function(x, arg, what) {
  if (!(is.character(x) && length(x) == 1 && !is.na(x) && nzchar(x))) .arg_error(arg, what, x)
  x
}

# Run a program, its output (stdout and stderr) as a character vector with attribute `status`.
# PYTHONHOME/PYTHONPATH as reticulate set them for its own Python would make any child Python
# see that environment: they are cleared.
.run <- function(cmd, args) {
  out <- suppressWarnings(system2(cmd, args, stdout = TRUE, stderr = TRUE, env = .child_env()))
  attr(out, "status") <- as.integer(attr(out, "status") %||% 0L)
  out
}

`%||%` <- function(a, b) if (is.null(a)) b else a

# Can this Python import these modules? Checked in a child process, so the R session's own
# Python is not started or touched.
.python_has_modules <- function(python, modules) {
  if (is.na(python) || !file.exists(python)) return(FALSE)
  code <- paste0("import ", paste(modules, collapse = ", "))
  status <- suppressWarnings(system2(python, c("-c", shQuote(code)), stdout = FALSE, stderr = FALSE,
                                     env = .child_env()))
  identical(as.integer(status), 0L)
}

# Environment for a child Python. R puts its own library folders first in LD_LIBRARY_PATH (see
# R.home("etc")/ldpaths; on Debian that includes /usr/lib/x86_64-linux-gnu), which makes a
# Python built elsewhere (pyenv, conda) load the system's libpython instead of its own and fail
# (e.g. its ssl module: "undefined symbol"); the child gets LD_LIBRARY_PATH without them.
.child_env <- function() {
  c("PYTHONHOME=", "PYTHONPATH=", paste0("LD_LIBRARY_PATH=", .ld_path_without_r()))
}

.ld_path_without_r <- function() {
  cur <- strsplit(Sys.getenv("LD_LIBRARY_PATH"), ":", fixed = TRUE)[[1]]
  r_dirs <- c(R.home("lib"), Sys.getenv("R_JAVA_LD_LIBRARY_PATH"))
  ldpaths <- file.path(R.home("etc"), "ldpaths")
  if (file.exists(ldpaths)) {
    txt <- paste(readLines(ldpaths, warn = FALSE), collapse = "\n")
    tokens <- regmatches(txt, gregexpr("(\\$\\{(R|JAVA)_HOME\\}|/)[^:}\"\n ]*", txt))[[1]]
    java <- Sys.getenv("JAVA_HOME", "/usr/lib/jvm/default-java")
    tokens <- sub("${R_HOME}", R.home(), sub("${JAVA_HOME}", java, tokens, fixed = TRUE), fixed = TRUE)
    r_dirs <- c(r_dirs, tokens[startsWith(tokens, "/")])
  }
  paste(setdiff(cur[nzchar(cur)], r_dirs), collapse = ":")
}
