# `opt$step()` in an R loop: reticulate's `$` builds a new R wrapper around a
# new bound method on every call, which costs more than a small optimizer step
# itself. For pyfastopt's optimizers the wrappers of `step` and `zero_grad`
# are made once per R object and kept (as attributes of the object, which is
# an environment, so every copy of the reference shares them). Other names
# go to reticulate as usual.
`$.pyfastopt_optimizer` <- function(x, name) {
  key <- switch(name, step = "pyfastopt_step", zero_grad = "pyfastopt_zero_grad", NULL)
  if (is.null(key)) return(NextMethod())
  f <- attr(x, key, exact = TRUE)
  if (is.null(f)) {
    m <- reticulate::py_get_attr(x, name)
    wrapper <- NextMethod()
    # no arguments (the usual call): straight to Python; else reticulate's wrapper
    f <- function(...) {
      if (...length()) return(wrapper(...))
      res <- reticulate::py_call(m)
      if (inherits(res, "python.builtin.NoneType")) invisible(NULL) else reticulate::py_to_r(res)
    }
    attr(x, key) <- f
  }
  f
}

#' @rawNamespace S3method("$", pyfastopt.optimizer.Optimizer, "$.pyfastopt_optimizer")
NULL
