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
#' `params[3]$grad <- NULL` work in place. An index out of range is an error that says
#' which indices are valid (`0..length(params) - 1`).
#'
#' For R's habits: `length(params)`; `as.list(params)` (or `params$items`) is an R list of
#' the items, indexed 1-based as usual, and `for (p in as.list(params))` loops over them
#' (`for` cannot loop over a Python object itself). `params[[i]]` is an error that says
#' this, rather than a second, conflicting convention.
#'
#' @param ... Items, or one R list (or Python iterable) of items; named
#'   arguments (`use_list`, `match`) go to Python.
#' @return `L()` returns a Python `L`; `[` an item (one index) or an `L`.
#' @export
#' @examplesIf pyfastopt_available()
#' params <- L(lapply(0:3, function(x) tst_param(x)))
#' params[0:1]
#' params[3]
#' length(params)
L <- function(...) {
  args <- list(...)
  nm <- names(args)
  unnamed <- if (is.null(nm)) rep(TRUE, length(args)) else nm == ""
  args[unnamed] <- lapply(args[unnamed], function(a) {
    if (is.list(a) && !inherits(a, "python.builtin.object")) unname(a) else a
  })
  .call_py("L()", .pyfn("pyfastopt", "L"), args)
}

# Python's index for `i`, checked against the length `n`: every error says indexing is
# 0-based and which indices are valid.
.L_index <- function(i, n) {
  if (inherits(i, "python.builtin.object")) return(i)
  valid <- if (n > 0) sprintf("valid: 0..%d, or -%d..-1 from the end", n - 1, n) else "the L is empty"
  if (is.logical(i)) {
    if (anyNA(i)) .arg_error("i", "an index without NA", i)
    if (length(i) != n) .arg_error("i", sprintf("a mask of length %d (the L's length)", n), i)
    return(as.list(i))
  }
  if (is.factor(i) || !is.numeric(i) || length(i) == 0 || anyNA(i) || any(!is.finite(i)) || any(i != round(i)))
    .arg_error("i", sprintf("a whole number or a vector of whole numbers (0-based, %s)", valid), i)
  bad <- i[i >= n | i < -n]
  if (length(bad))
    stop(sprintf("index %s is out of range: indexing an L is 0-based, %s", format(bad[1]), valid), call. = FALSE)
  if (length(i) == 1) as.integer(i) else as.list(as.integer(i))
}

#' @noRd
`[.pyfastopt_L` <- function(x, i) {
  if (missing(i)) return(x)
  res <- tryCatch(reticulate::py_get_item(x, .L_index(i, length(x))),
                  error = function(e) .py_error("L[i]", e))
  reticulate::py_to_r(res)
}

# `[[` would have to be 0-based like `[` (params[[1]] the second item, a trap for R users) or
# 1-based (a second convention on one object): neither, it says what to use.
.L_double_bracket <- function(x) {
  stop(sprintf(paste0(
    "`[[` is not used on an L (its `[` is 0-based, as in Python): use x[i] with i 0-based ",
    "(valid: 0..%d), or as.list(x)[[i]] for an R list (1-based)"), length(x) - 1L), call. = FALSE)
}

#' @noRd
`[[.pyfastopt_L` <- function(x, i) .L_double_bracket(x)

#' @noRd
`[<-.pyfastopt_L` <- function(x, i, value) {
  idx <- .L_index(i, length(x))
  if (is.list(idx) && is.list(value) && !inherits(value, "python.builtin.object")) value <- unname(value)
  tryCatch(reticulate::py_set_item(x, idx, value), error = function(e) .py_error("L[i] <- value", e))
  x
}

#' @noRd
`[[<-.pyfastopt_L` <- function(x, i, value) .L_double_bracket(x)

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
