# R inside Python (rpy2, e.g. %%R cells in Jupyter): reticulate then uses the
# host Python. At exit rpy2 shuts R down from an atexit handler (endr), and R's
# last garbage collection releases Python objects held by reticulate while
# rpy2 has released the GIL: the process segfaults (exit 139) or aborts after
# all the user's work is done (reticulate <= 1.30; see
# rstudio/reticulate#1236). The fix: do not run that R shutdown (R's .Last and
# exit finalizers are skipped) and remove R's session temp folder from
# Python's exit instead. Off with options(pyfastopt.rpy2_exit_fix = FALSE).
# Second crash: reticulate 1.28 starts a thread that keeps scheduling calls into
# the Python interpreter (Py_AddPendingCall every 250 ms) and is never
# stopped; once Python has finalized its interpreter, the next call segfaults
# (about 1 exit in 4 here). So once Python's own exit work is done, the
# process ends at the first C exit handler with the same exit status:
# glibc's on_exit() calls _exit(status), before the libraries' slow static
# destructors (torch's) leave the thread time to fire.
.rpy2_exit_fix <- function() {
  if (isFALSE(getOption("pyfastopt.rpy2_exit_fix", TRUE))) return(invisible(FALSE))
  code <- paste(
    "import sys, atexit, shutil, ctypes",
    "_ri = sys.modules.get('rpy2.rinterface')",
    "applied = False",
    "if _ri is not None and hasattr(_ri, 'endr'):",
    "    atexit.unregister(_ri.endr)",
    "    try:",
    "        _libc = ctypes.CDLL(None)",
    "        _libc.fflush.argtypes = [ctypes.c_void_p]",
    "        atexit.register(_libc.fflush, None)",
    "        _libc.on_exit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]",
    "        _libc.on_exit(ctypes.cast(_libc._exit, ctypes.c_void_p), None)",
    "    except (OSError, AttributeError):",
    "        pass",
    "    atexit.register(shutil.rmtree, R_TEMPDIR, True)",
    "    applied = True",
    sep = "\n")
  code <- sub("R_TEMPDIR", encodeString(normalizePath(tempdir(), mustWork = FALSE), quote = "'"), code,
              fixed = TRUE)
  res <- tryCatch(reticulate::py_run_string(code, local = TRUE), error = function(e) NULL)
  invisible(isTRUE(res$applied))
}

#' Run R code with Python's GIL held (for R inside Python, through rpy2)
#'
#' When R runs inside a Python process through rpy2 (for example in `%%R`
#' cells of Jupyter), reticulate uses that Python, and `library(pyfastopt)`
#' works on the same tensors as the Python code. But rpy2 releases Python's
#' global interpreter lock (GIL) while R runs, and reticulate 1.28 (Debian's)
#' frees the Python objects R no longer needs from R's garbage collector
#' without taking the GIL back: once enough of them pile up, an R garbage
#' collection kills the process ("Fatal Python error: PyThreadState_Get: the
#' function must be called with the GIL held"). A loop of a few thousand
#' `opt$step()` calls is enough.
#'
#' `with_python_gil(expr)` evaluates `expr` from inside a call made by Python
#' (so the GIL is held the whole time) and collects R's garbage before it
#' returns, while the GIL is still held. Wrap loops and other code that makes
#' many Python calls in it. Outside rpy2 (R as the main program) it just
#' evaluates `expr`.
#'
#' Separately, when the package finds it is running under rpy2, it stops
#' rpy2 from shutting R down at Python's exit (that shutdown crashes the same
#' way, after all the work is done) and removes R's temporary folder
#' instead; and once Python's own exit work is done, it ends the process with
#' its exit status before C libraries' exit handlers run (reticulate 1.28
#' leaves a thread that would call into the finalized interpreter).
#' `options(pyfastopt.rpy2_exit_fix = FALSE)` before the first call turns
#' this off.
#'
#' @param expr R code.
#' @return The value of `expr`.
#' @export
#' @examplesIf pyfastopt_available()
#' params <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#' opt <- SGD(params, lr = 0.1)
#' with_python_gil(for (i in 1:10) opt$step())
#' params
with_python_gil <- function(expr) {
  .pf()
  if (!isTRUE(.pkg$under_rpy2)) return(expr)
  # One Python callable, made once and kept, runs the R code: a new one per
  # call would itself be Python garbage freed by a later, unsafe, R gc.
  if (is.null(.pkg$gil_runner)) {
    .pkg$gil_box <- new.env(parent = emptyenv())
    .pkg$gil_runner <- reticulate::r_to_py(function() {
      box <- .pkg$gil_box
      box$res <- tryCatch(withVisible(box$thunk()), error = function(e) e)
      box$thunk <- NULL
      gc(verbose = FALSE)
      NULL
    })
  }
  box <- .pkg$gil_box
  box$thunk <- function() expr
  reticulate::py_call(.pkg$gil_runner)
  res <- box$res
  box$res <- NULL
  if (inherits(res, "error")) stop(res)
  if (res$visible) res$value else invisible(res$value)
}
