# Argument checks and conversions shared by the wrappers. Each error names the
# argument, as the Python side does ("lr must be a finite number >= 0, got -1").

.describe <- function(x) {
  if (is.null(x)) return("NULL")
  if (inherits(x, "python.builtin.object")) return(paste0("a Python ", class(x)[1]))
  if (is.function(x)) return("a function")
  if (is.factor(x)) return(sprintf("a factor of length %d", length(x)))
  if (is.character(x) && length(x) == 1 && !is.na(x) && nchar(x, type = "bytes") > 60)
    return(sprintf("a string of %d characters", nchar(x, type = "bytes")))
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
  res <- tryCatch(do.call(f, args), error = function(e) .py_error(where, e))
  .flush_warnings()
  res
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

# Callbacks (steppers) for Optimizer(): exported steppers become the Python functions
# themselves; other Python callables pass through; an R function becomes a Python stepper
# (pyfastopt.r_bridge.r_stepper) that names it in its errors, and runs once per bucket when
# marked with multi_tensor(). `exprs` are the expressions the steppers were given as, for names.
.cbs <- function(cbs, exprs = NULL) {
  one <- function(f, expr, k) {
    if (inherits(f, "pyfastopt_stepper")) return(.stepper_py(f))
    if (inherits(f, "python.builtin.object")) return(f)
    if (is.function(f)) return(.r_stepper(f, .stepper_name(f, expr, k)))
    .arg_error("cbs", "a stepper function or a list of them", f)
  }
  if (is.null(cbs)) return(list())
  if (is.function(cbs) || inherits(cbs, "python.builtin.object")) return(list(one(cbs, exprs, 1L)))
  if (is.list(cbs)) {
    if (!is.null(exprs) && is.call(exprs) && identical(exprs[[1]], as.name("list")) &&
        length(exprs) == length(cbs) + 1L) {
      exprs <- as.list(exprs)[-1]
    } else {
      exprs <- vector("list", length(cbs))
    }
    return(unname(Map(one, cbs, exprs, seq_along(cbs))))
  }
  .arg_error("cbs", "a stepper function or a list of them", cbs)
}

.stepper_name <- function(f, expr, k) {
  nm <- attr(f, "name", exact = TRUE)
  if (is.character(nm) && length(nm) == 1) return(nm)
  if (is.name(expr)) return(as.character(expr))
  sprintf("R stepper %d", k)
}

.r_stepper <- function(f, name) {
  fmls <- names(formals(f))
  if (!length(fmls) || identical(fmls[1], "..."))
    stop(sprintf("R stepper '%s': its first argument must be the parameter, e.g. function(p, lr, ...)", name),
         call. = FALSE)
  # without `...`, Python passes only the arguments the function declares
  arg_names <- if ("..." %in% fmls) NULL else as.list(fmls[-1])
  defaults <- attr(f, "defaults", exact = TRUE)
  if (!is.null(defaults) && !(is.list(defaults) && !is.null(names(defaults))))
    stop(sprintf("R stepper '%s': attr(, \"defaults\") must be a named list", name), call. = FALSE)
  bare <- f
  attributes(bare) <- NULL
  reticulate::py_call(reticulate::py_get_attr(.bridge(), "r_stepper"), bare, name,
                      multi_tensor = isTRUE(attr(f, "multi_tensor", exact = TRUE)),
                      defaults = defaults, arg_names = arg_names)
}
