#' Install the Python side of pyfastopt
#'
#' Creates (or reuses) a Python virtual environment with torch and the
#' `pyfastopt` Python package. The default environment, `"r-pyfastopt"`, is
#' one reticulate finds by itself: after a restart of R, `library(pyfastopt)`
#' uses it unless `RETICULATE_PYTHON` points elsewhere.
#'
#' An environment that already imports `torch` and `pyfastopt` is reused as it
#' is (unless `force = TRUE`), so calling this twice costs nothing.
#'
#' @param envname Name of a reticulate virtualenv, or a path to one.
#' @param package Where pip gets the Python package: `"pyfastopt"` from the
#'   package index, or a path to a source checkout (the folder that holds
#'   `pyproject.toml`).
#' @param torch The pip requirement for torch. The default asks for the
#'   CPU build from `index_url`.
#' @param index_url Extra index pip uses for torch (`NULL`: only the default
#'   index); the default is PyTorch's CPU wheels, much smaller than CUDA's.
#' @param python The Python used to create a new environment (`NULL`: the one
#'   reticulate finds).
#' @param force Reinstall even when the environment already works.
#' @param dry_run Only return the plan (the environment and the pip
#'   arguments), without running anything.
#' @return Invisibly, the path of the environment's Python (a list describing
#'   the plan when `dry_run = TRUE`).
#' @export
#' @examples
#' install_pyfastopt(dry_run = TRUE)
#' \dontrun{
#' install_pyfastopt()
#' # then restart R; or, for another environment:
#' Sys.setenv(RETICULATE_PYTHON = "/path/to/venv/bin/python")
#' }
install_pyfastopt <- function(envname = "r-pyfastopt", package = "pyfastopt",
                              torch = "torch>=2.1,<3",
                              index_url = "https://download.pytorch.org/whl/cpu",
                              python = NULL, force = FALSE, dry_run = FALSE) {
  if (!(is.character(envname) && length(envname) == 1 && nzchar(envname)))
    .arg_error("envname", "a single environment name or path", envname)
  if (!(is.character(package) && length(package) == 1 && nzchar(package)))
    .arg_error("package", "a pip requirement or a path", package)
  if (!(is.character(torch) && length(torch) == 1 && nzchar(torch)))
    .arg_error("torch", "a pip requirement", torch)
  if (!is.null(index_url) && !(is.character(index_url) && length(index_url) == 1))
    .arg_error("index_url", "a URL or NULL", index_url)
  .flag(force, "force")
  .flag(dry_run, "dry_run")
  if (dir.exists(package)) package <- normalizePath(package)

  exists <- reticulate::virtualenv_exists(envname)
  env_python <- if (exists) reticulate::virtualenv_python(envname) else NA_character_
  works <- exists && .python_has_modules(env_python, c("torch", "pyfastopt"))
  pip_options <- if (is.null(index_url)) character() else c("--extra-index-url", index_url)
  plan <- list(envname = envname, create = !exists, install = force || !works,
               packages = c(torch, package), pip_options = pip_options, python = env_python)
  if (dry_run) return(plan)

  if (!exists) {
    message("Creating the Python environment '", envname, "'")
    reticulate::virtualenv_create(envname, python = python)
    env_python <- reticulate::virtualenv_python(envname)
  }
  if (plan$install) {
    message("Installing torch and pyfastopt into '", envname, "'")
    reticulate::virtualenv_install(envname, packages = c(torch, package),
                                   ignore_installed = force, pip_options = pip_options)
    if (!.python_has_modules(env_python, c("torch", "pyfastopt")))
      stop("install_pyfastopt(): the environment '", envname, "' still cannot import torch ",
           "and pyfastopt; see pip's output above.", call. = FALSE)
  } else {
    message("The environment '", envname, "' already has torch and pyfastopt; nothing to do.")
  }
  message("Done. Restart R, then library(pyfastopt) uses it (or set RETICULATE_PYTHON=",
          env_python, ").")
  invisible(env_python)
}

# Can this Python import these modules? Checked in a child process, so the
# R session's own Python is not started or touched.
.python_has_modules <- function(python, modules) {
  if (is.na(python) || !file.exists(python)) return(FALSE)
  code <- paste0("import ", paste(modules, collapse = ", "))
  # PYTHONHOME/PYTHONPATH as reticulate set them for its own Python would
  # make any child Python see that environment: clear them.
  status <- suppressWarnings(system2(python, c("-c", shQuote(code)), stdout = FALSE, stderr = FALSE,
                                     env = c("PYTHONHOME=", "PYTHONPATH=")))
  identical(as.integer(status), 0L)
}
