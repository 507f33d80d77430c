# Argument checks and conversions shared by the wrappers. Each error names the
# argument, as the Python side does ("lr must be a finite number >= 0, got -1").

.describe <- function(x) {
  if (is.null(x)) return("NULL")
  if (inherits(x, "python.builtin.object")) return(paste0("a Python ", class(x)[1]))
  if (is.function(x)) return("a function")
  if (is.atomic(x) && length(x) == 1) return(paste0(deparse(x), collapse = ""))
  paste0("a ", class(x)[1], " of length ", length(x))
}

.arg_error <- function(arg, what, x) {
  stop(sprintf("`%s` must be %s, got %s", arg, what, .describe(x)), call. = FALSE)
}

# A number (or, when `vector_ok`, a numeric vector: one value per param group).
# Python objects (a numpy value, a tensor, a slice) go through unchanged.
.num <- function(x, arg, vector_ok = FALSE) {
  if (inherits(x, "python.builtin.object")) return(x)
  ok <- is.numeric(x) && length(x) >= 1 && !anyNA(x) && (vector_ok || length(x) == 1)
  if (!ok) .arg_error(arg, if (vector_ok) "a number or a numeric vector (one per parameter group)" else "a single number", x)
  if (length(x) > 1) as.list(as.numeric(x)) else as.numeric(x)
}

# A whole number that Python needs as an int: 6 and 6L both become int 6.
.int <- function(x, arg) {
  if (inherits(x, "python.builtin.object")) return(x)
  ok <- is.numeric(x) && length(x) == 1 && !is.na(x) && is.finite(x) && x == round(x) &&
    abs(x) <= .Machine$integer.max
  if (!ok) .arg_error(arg, "a whole number", x)
  as.integer(x)
}

.flag <- function(x, arg) {
  if (!(is.logical(x) && length(x) == 1 && !is.na(x))) .arg_error(arg, "TRUE or FALSE", x)
  x
}

.is_tensor <- function(x) inherits(x, "torch.Tensor")

# Python's error text without reticulate's traceback banner.
.py_error <- function(where, e) {
  if (inherits(e, "pyfastopt_setup_error")) stop(e)
  stop(sprintf("%s: %s", where, .clean_py_message(conditionMessage(e))), call. = FALSE)
}

# Call a Python callable with R arguments; a Python exception becomes an R
# error whose message starts with `where` and carries the Python message.
.call_py <- function(where, f, args) {
  tryCatch(do.call(f, args), error = function(e) .py_error(where, e))
}

# R data for torch: a length-1 vector stays a scalar, a longer vector becomes a
# Python list, a matrix/array a nested list (row-major, as torch expects), so
# no numpy is needed.
.to_nested <- function(x) {
  if (inherits(x, "python.builtin.object")) return(x)
  if (is.data.frame(x)) x <- as.matrix(x)
  if (is.list(x)) return(lapply(x, .to_nested))
  d <- dim(x)
  if (is.null(d) || length(d) == 1) {
    if (!is.null(d)) return(as.list(as.vector(x)))
    return(x)
  }
  lapply(seq_len(d[1]), function(i) {
    sub <- if (length(d) == 2) x[i, , drop = TRUE] else {
      idx <- c(list(i), rep(list(TRUE), length(d) - 1))
      array(do.call(`[`, c(list(x), idx, list(drop = FALSE))), dim = d[-1])
    }
    if (length(d) == 2) as.list(as.vector(sub)) else .to_nested(sub)
  })
}

# Params for an optimizer: a tensor, an L, a list of tensors, a list of lists
# (one per parameter group) or a Python iterable such as model$parameters().
.params <- function(params) {
  if (is.null(params)) .arg_error("params", "a tensor, a list of tensors or a list of parameter groups", params)
  if (inherits(params, "python.builtin.object")) return(params)
  if (is.list(params)) {
    if (length(params) == 0) .arg_error("params", "a non-empty list of tensors", params)
    return(unname(lapply(params, function(p) {
      if (is.list(p) && !inherits(p, "python.builtin.object")) unname(p) else p
    })))
  }
  .arg_error("params", "a tensor, a list of tensors or a list of parameter groups", params)
}

# Callbacks (steppers) for Optimizer(): exported steppers become the Python
# functions themselves; other Python callables pass through.
.cbs <- function(cbs) {
  one <- function(f) {
    if (inherits(f, "pyfastopt_stepper")) return(.stepper_py(f))
    if (inherits(f, "python.builtin.object")) return(f)
    if (is.function(f)) return(f)   # an R stepper: reticulate wraps it (slow, see ?Optimizer)
    .arg_error("cbs", "a stepper function or a list of them", f)
  }
  if (is.null(cbs)) return(list())
  if (is.function(cbs) || inherits(cbs, "python.builtin.object")) return(list(one(cbs)))
  if (is.list(cbs)) return(unname(lapply(cbs, one)))
  .arg_error("cbs", "a stepper function or a list of them", cbs)
}
