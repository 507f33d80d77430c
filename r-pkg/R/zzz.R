# Package state. The Python modules are imported with `delay_load = TRUE` in
# .onLoad, so loading the package never starts Python: Python starts on the
# first call that needs it, and a missing Python or module is reported there
# (with the fix) instead of breaking library(pyfastopt).
.pkg <- new.env(parent = emptyenv())
.pkg$ready <- FALSE   # TRUE once pyfastopt imported and the class methods are registered
.pkg$fns <- list()    # cached Python callables (operator.*, torch.*)

.onLoad <- function(libname, pkgname) {
  .pkg$pyfastopt <- reticulate::import("pyfastopt", delay_load = TRUE)
  .pkg$torch <- reticulate::import("torch", delay_load = TRUE)
  .pkg$operator <- reticulate::import("operator", delay_load = TRUE)
  .pkg$bridge <- reticulate::import("pyfastopt.r_bridge", delay_load = TRUE)
  .pkg$warnings <- list()   # Python warnings not yet re-raised in R (see .flush_warnings())
  invisible()
}

# How to fix a missing Python side; used by every first call that fails.
.setup_hint <- function() {
  paste0(
    "To fix it, either run pyfastopt::install_pyfastopt() and restart R, ",
    "or set the environment variable RETICULATE_PYTHON to a Python that has ",
    "torch and pyfastopt installed (before the first call in the session)."
  )
}

.clean_py_message <- function(msg) {
  msg <- sub("\n*Detailed traceback:.*$", "", msg)
  msg <- sub("\n*Run `reticulate::py_last_error\\(\\)` for details\\..*$", "", msg)
  trimws(msg)
}

# The pyfastopt Python module; stops with an actionable message when Python or
# the module is missing. Cheap after the first successful call.
.pf <- function() {
  if (.pkg$ready) return(.pkg$pyfastopt)
  # (reticulate prints the Python configuration it tried on stdout: keep it
  # out of the user's output, the error message says what to do)
  utils::capture.output(res <- tryCatch({
    reticulate::py_get_attr(.pkg$pyfastopt, "Optimizer")
    TRUE
  }, error = function(e) e))
  if (!isTRUE(res)) {
    msg <- paste0(
      "pyfastopt: the Python side is not available (Python with the modules ",
      "'torch' and 'pyfastopt').\n", .setup_hint(), "\nreticulate said: ",
      sub("\n+Detected Python configuration:.*$", "", .clean_py_message(conditionMessage(res)))
    )
    stop(structure(class = c("pyfastopt_setup_error", "error", "condition"),
                   list(message = msg, call = NULL)))
  }
  .register_py_classes()
  .pkg$under_rpy2 <- .rpy2_exit_fix()
  # R as the main program: Python's warnings come back as R warnings. (Under rpy2 the host
  # Python shows its warnings itself.)
  if (!isTRUE(.pkg$under_rpy2)) .route_py_warnings()
  .pkg$ready <- TRUE
  .pkg$pyfastopt
}

# Python calls this R function for each warning it would show; it only queues the warning
# (signalling an R condition from inside a Python call could unwind through Python's frames).
# The wrappers re-raise the queue once their Python call has returned.
.route_py_warnings <- function() {
  collect <- function(message, category) {
    .pkg$warnings[[length(.pkg$warnings) + 1L]] <- paste0(category, ": ", message)
    NULL
  }
  .pkg$warning_hook <- reticulate::r_to_py(collect)   # kept, so Python's reference stays valid
  reticulate::py_call(reticulate::py_get_attr(.pkg$bridge, "route_warnings"), .pkg$warning_hook)
  invisible()
}

# Re-raise queued Python warnings as R warnings (catchable, and shown by knitr).
.flush_warnings <- function() {
  if (!length(.pkg$warnings)) return(invisible())
  pending <- .pkg$warnings
  .pkg$warnings <- list()
  for (w in pending) warning(w, call. = FALSE)
  invisible()
}



.torch <- function() {
  .pf()
  .pkg$torch
}

# A cached Python callable: `module.name`.
.pyfn <- function(module, name) {
  key <- paste(module, name, sep = ".")
  f <- .pkg$fns[[key]]
  if (is.null(f)) {
    .pf()
    mod <- .pkg[[module]]
    f <- mod[[name]]   # an R function wrapping the Python callable
    .pkg$fns[[key]] <- f
  }
  f
}

# R class name reticulate gives instances of a Python class.
.r_class_of <- function(pyclass) {
  mod <- reticulate::py_to_r(reticulate::py_get_attr(pyclass, "__module__"))
  nm <- reticulate::py_to_r(reticulate::py_get_attr(pyclass, "__name__"))
  if (identical(mod, "builtins")) mod <- "python.builtin"
  paste(mod, nm, sep = ".")
}

# pyfastopt.L may live in any submodule: register the `L` methods under the
# class name reticulate will really use, once the module is imported.
.register_py_classes <- function() {
  cls <- .r_class_of(reticulate::py_get_attr(.pkg$pyfastopt, "L"))
  ns <- asNamespace("pyfastopt")
  for (g in c("[", "[<-", "[[", "[[<-", "length", "as.list", "print", "str")) {
    registerS3method(g, cls, get(paste0(g, ".pyfastopt_L"), envir = ns), envir = ns)
  }
  .pkg$L_class <- cls
  opt_cls <- .r_class_of(reticulate::py_get_attr(.pkg$pyfastopt, "Optimizer"))
  registerS3method("$", opt_cls, get("$.pyfastopt_optimizer", envir = ns), envir = ns)
  # the lists of tensors multi_tensor() R steppers see (pyfastopt.tensor_list)
  engine <- tryCatch(reticulate::import("pyfastopt.tensor_list", convert = FALSE), error = function(e) NULL)
  for (nm in c("TensorList", "ParamBatch")) {
    if (!is.null(engine) && reticulate::py_has_attr(engine, nm)) {
      registerS3method("$", .r_class_of(reticulate::py_get_attr(engine, nm)),
                       get(".tensor_list_dollar", envir = ns), envir = ns)
    }
  }
  invisible(cls)
}

#' Is the Python side of pyfastopt available?
#'
#' Tries (once per session) to import the Python modules `torch` and
#' `pyfastopt`. Starting Python is a one-way street in an R session, so call
#' it only when you are ready to use the Python that reticulate picks (see
#' `RETICULATE_PYTHON`).
#'
#' @return `TRUE` or `FALSE`.
#' @export
#' @examplesIf pyfastopt_available()
#' tensor(1)
pyfastopt_available <- function() {
  isTRUE(tryCatch({ .pf(); TRUE }, error = function(e) FALSE))
}
