# Tests that need Python skip, with the reason, only where the Python side
# (Python with torch and pyfastopt) is absent. With PYFASTOPT_REQUIRE_PYTHON
# set (the project's own test runs) they never skip: a missing Python fails.
python_reason <- local({
  reason <- NULL
  function() {
    if (is.null(reason)) {
      reason <<- tryCatch({ pyfastopt:::.pf(); "" }, error = function(e) conditionMessage(e))
    }
    reason
  }
})

skip_if_no_pyfastopt <- function() {
  why <- python_reason()
  if (!nzchar(why)) return(invisible(TRUE))
  if (nzchar(Sys.getenv("PYFASTOPT_REQUIRE_PYTHON"))) {
    stop("PYFASTOPT_REQUIRE_PYTHON is set but the Python side is missing: ", why)
  }
  skip(paste("Python with torch and pyfastopt is not available:", why))
}

# Values of a tensor as an R vector.
vals <- function(t) as.numeric(t)

out <- function(expr) capture.output(expr)

py <- function() reticulate::import("pyfastopt")
torch <- function() reticulate::import("torch")

params4 <- function() L(lapply(0:3, function(x) tst_param(x)))

# Run R code in a fresh Rscript (own Python), with extra environment variables.
run_rscript <- function(code, env = character()) {
  rscript <- file.path(R.home("bin"), "Rscript")
  libs <- paste(.libPaths(), collapse = .Platform$path.sep)
  f <- tempfile(fileext = ".R")
  writeLines(code, f)
  on.exit(unlink(f))
  envs <- c(paste0("R_LIBS=", libs), "PYTHONHOME=", "PYTHONPATH=", env)
  res <- suppressWarnings(system2(rscript, c("--vanilla", f), stdout = TRUE, stderr = TRUE, env = envs))
  list(status = attr(res, "status") %||% 0L, output = paste(res, collapse = "\n"))
}

`%||%` <- function(a, b) if (is.null(a)) b else a

# Python's repr of an object (e.g. opt$hypers, which prints as an R list)
pyrepr <- function(x) reticulate::py_repr(x)
