#' fastcore's `L` list
#'
#' `L(...)` builds a Python `pyfastopt.L` (fastcore `L` semantics): `L(list)`
#' wraps the items of an R list, `L(a, b, c)` holds its arguments, `L()` is
#' empty. Optimizers take an `L` (or a plain list) of parameters.
#'
#' Indexing is **0-based**, as in Python, in every reticulate version:
#' `params[3]` is the fourth item, `params[0:1]` is an `L` of items 0 and 1
#' (an R vector of indices is an index list, never a Python slice),
#' `params[c(TRUE, FALSE)]` is a mask. `params[3] <- x` and
#' `params[3]$grad <- NULL` work in place. `params$items` is the R list of the
#' items; `length()` and `as.list()` work as expected.
#'
#' @param ... Items, or one R list (or Python iterable) of items; named
#'   arguments (`use_list`, `match`) go to Python.
#' @return `L()` returns a Python `L`; `[` an item (one index) or an `L`.
#' @export
#' @examples
#' if (pyfastopt_available()) {
#'   params <- L(lapply(0:3, function(x) tst_param(x)))
#'   params[0:1]
#'   params[3]
#'   length(params)
#' }
L <- function(...) {
  args <- list(...)
  nm <- names(args)
  unnamed <- if (is.null(nm)) rep(TRUE, length(args)) else nm == ""
  args[unnamed] <- lapply(args[unnamed], function(a) {
    if (is.list(a) && !inherits(a, "python.builtin.object")) unname(a) else a
  })
  .call_py("L()", .pyfn("pyfastopt", "L"), args)
}

.L_index <- function(i) {
  if (inherits(i, "python.builtin.object")) return(i)
  if (is.logical(i)) {
    if (anyNA(i)) .arg_error("i", "an index without NA", i)
    return(as.list(i))
  }
  if (!is.numeric(i) || anyNA(i) || any(i != round(i)))
    .arg_error("i", "a whole number or a vector of whole numbers (0-based)", i)
  if (length(i) == 1) as.integer(i) else as.list(as.integer(i))
}

#' @noRd
`[.pyfastopt_L` <- function(x, i) {
  if (missing(i)) return(x)
  res <- tryCatch(reticulate::py_get_item(x, .L_index(i)),
                  error = function(e) .py_error("L[i]", e))
  reticulate::py_to_r(res)
}

#' @noRd
`[[.pyfastopt_L` <- function(x, i) {
  if (!(is.numeric(i) && length(i) == 1)) .arg_error("i", "a single whole number (0-based)", i)
  `[.pyfastopt_L`(x, i)
}

#' @noRd
`[<-.pyfastopt_L` <- function(x, i, value) {
  idx <- .L_index(i)
  if (is.list(idx) && is.list(value) && !inherits(value, "python.builtin.object")) value <- unname(value)
  tryCatch(reticulate::py_set_item(x, idx, value), error = function(e) .py_error("L[i] <- value", e))
  x
}

#' @noRd
`[[<-.pyfastopt_L` <- function(x, i, value) {
  if (!(is.numeric(i) && length(i) == 1)) .arg_error("i", "a single whole number (0-based)", i)
  `[<-.pyfastopt_L`(x, i, value)
}

#' @noRd
length.pyfastopt_L <- function(x) {
  as.integer(reticulate::py_len(x))
}

#' @noRd
as.list.pyfastopt_L <- function(x, ...) {
  items <- reticulate::py_get_attr(x, "items")
  reticulate::py_to_r(reticulate::py_call(reticulate::py_eval("list", convert = FALSE), items))
}

#' @noRd
print.pyfastopt_L <- function(x, ...) {
  writeLines(reticulate::py_repr(x))
  invisible(x)
}

#' @noRd
str.pyfastopt_L <- function(object, ...) {
  cat(reticulate::py_str(object), "\n", sep = "")
  invisible(object)
}

# Registered statically for the class name of the current Python package too
# (pyfastopt.foundation.L), so an L met before any wrapper call still indexes
# 0-based; .register_py_classes() covers the class wherever it lives.
#' @rawNamespace S3method("[", pyfastopt.foundation.L, "[.pyfastopt_L")
#' @rawNamespace S3method("[<-", pyfastopt.foundation.L, "[<-.pyfastopt_L")
#' @rawNamespace S3method("[[", pyfastopt.foundation.L, "[[.pyfastopt_L")
#' @rawNamespace S3method("[[<-", pyfastopt.foundation.L, "[[<-.pyfastopt_L")
#' @rawNamespace S3method(length, pyfastopt.foundation.L, length.pyfastopt_L)
#' @rawNamespace S3method(as.list, pyfastopt.foundation.L, as.list.pyfastopt_L)
#' @rawNamespace S3method(print, pyfastopt.foundation.L, print.pyfastopt_L)
#' @rawNamespace S3method(str, pyfastopt.foundation.L, str.pyfastopt_L)
NULL
