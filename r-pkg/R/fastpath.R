# `opt$name` on pyfastopt's optimizers.
#
# * Methods (`opt$step()`, `opt$set_hyper("lr", 0.1)`, ...) are R functions that check their R
#   arguments first (R's NA, NULL, factors and long strings would otherwise reach Python
#   converted: NA_integer_ becomes -2147483648, NA becomes True), then call Python, turn a Python
#   error into an R error naming the method, and re-raise Python's warnings as R warnings. Each
#   wrapper is made once per R object and kept as an attribute of the object (an environment, so
#   every copy of the reference shares it): reticulate's own `$` builds a new wrapper around a new
#   bound method on every call, which costs more than a small step.
# * `opt$state_dict()` stays a Python dict (reticulate would turn its int keys into names and
#   its one-element lists into scalars, and load_state_dict() could not read it back).
# * `opt$hypers` prints as an R list; `opt$state` prints param by param (R-printed tensors)
#   instead of Python's repr of a dict keyed by tensors.
# * An optimizer restored by readRDS() is dead: every `$` says how to save one instead.
`$.pyfastopt_optimizer` <- function(x, name) {
  if (reticulate::py_is_null_xptr(x)) .dead_optimizer()
  if (identical(name, "hypers")) {
    h <- NextMethod()
    if (inherits(h, "python.builtin.object")) class(h) <- unique(c("pyfastopt_hypers", class(h)))
    return(h)
  }
  if (identical(name, "state")) {
    s <- NextMethod()
    if (inherits(s, "python.builtin.object")) {
      class(s) <- unique(c("pyfastopt_state", class(s)))
      attr(s, "pyfastopt_optimizer") <- x       # its params give the order and the positions
    }
    return(s)
  }
  key <- paste0("pyfastopt_", name)
  f <- attr(x, key, exact = TRUE)
  if (is.null(f)) {
    if (!name %in% names(.method_checks) || !reticulate::py_has_attr(x, name)) return(NextMethod())
    f <- .method_wrapper(x, name)
    attr(x, key) <- f
  }
  f
}

.dead_optimizer <- function() {
  stop("This optimizer is a Python object from an earlier R session (saveRDS()/load() keep only ",
       "a dead reference). Save an optimizer with save_optimizer(opt, path); in the new session ",
       "build it again (same params and hyper-parameters) and call load_optimizer(opt, path).",
       call. = FALSE)
}

.method_wrapper <- function(x, name) {
  m <- reticulate::py_get_attr(x, name)
  check <- .method_checks[[name]]
  where <- paste0("opt$", name, "()")
  convert <- !identical(name, "state_dict")
  # methods that may be called without arguments (step, zero_grad) take a shorter path then
  plain_call_ok <- identical(tryCatch(check(), error = function(e) NULL), list())
  function(...) {
    res <- if (plain_call_ok && !...length()) {
      tryCatch(reticulate::py_call(m), error = function(e) .py_error(where, e))
    } else {
      args <- check(...)
      tryCatch(do.call(reticulate::py_call, c(list(m), args)), error = function(e) .py_error(where, e))
    }
    .flush_warnings()
    if (inherits(res, "python.builtin.NoneType")) return(invisible(NULL))
    if (convert) reticulate::py_to_r(res) else res
  }
}

# A hyper-parameter's name: one short string.
.hyper_name <- function(k, arg) {
  if (is.factor(k)) .arg_error(arg, "a hyper-parameter name (a string, not a factor)", k)
  if (!(is.character(k) && length(k) == 1 && !is.na(k) && nzchar(k)))
    .arg_error(arg, "a hyper-parameter name (a single string)", k)
  if (nchar(k, type = "bytes") > 100)
    .arg_error(arg, "a hyper-parameter name of at most 100 characters", k)
  k
}

# A hyper-parameter's value: a number, one number per group, TRUE/FALSE, or a Python object
# (e.g. a slice for discriminative learning rates).
.hyper_value <- function(v, arg) {
  if (inherits(v, "python.builtin.object")) return(v)
  if (is.factor(v)) .arg_error(arg, "a number or TRUE/FALSE (not a factor)", v)
  if (is.logical(v) && length(v) == 1 && !is.na(v)) return(v)
  .num(v, arg, vector_ok = TRUE)
}

.no_args <- function(name) {
  force(name)
  function(...) {
    if (...length()) stop(sprintf("opt$%s() takes no arguments, got %d", name, ...length()), call. = FALSE)
    list()
  }
}

# name -> function(...) checking the R arguments and returning them, converted, for Python.
.method_checks <- list(
  step = function(closure = NULL) {
    if (!is.null(closure) && !is.function(closure) && !inherits(closure, "python.builtin.object"))
      .arg_error("closure", "a function or NULL", closure)
    if (is.null(closure)) list() else list(closure)
  },
  zero_grad = function(set_to_none) {
    if (missing(set_to_none)) list() else list(set_to_none = .flag(set_to_none, "set_to_none"))
  },
  set_hyper = function(k, v) {
    if (missing(k)) .arg_error("k", "a hyper-parameter name (a single string)", NULL)
    if (missing(v)) .arg_error("v", "a number", NULL)
    list(.hyper_name(k, "k"), .hyper_value(v, "v"))
  },
  set_hypers = function(...) {
    args <- list(...)
    nm <- names(args)
    if (length(args) && (is.null(nm) || any(nm == "")))
      stop("opt$set_hypers(): hyper-parameters must be named, e.g. lr = 0.1", call. = FALSE)
    for (n in nm) {
      .hyper_name(n, "names(...)")
      args[[n]] <- .hyper_value(args[[n]], n)
    }
    args
  },
  freeze_to = function(n) {
    if (missing(n)) .arg_error("n", "a whole number", NULL)
    list(.int(n, "n"))
  },
  freeze = .no_args("freeze"),
  unfreeze = .no_args("unfreeze"),
  clear_state = .no_args("clear_state"),
  flatten_params = .no_args("flatten_params"),
  state_dict = .no_args("state_dict"),
  load_state_dict = function(state_dict) {
    if (missing(state_dict)) state_dict <- NULL
    if (!inherits(state_dict, "python.builtin.dict"))
      .arg_error("state_dict", paste0(
        "the Python dict opt$state_dict() returns (an R list has lost its int keys to ",
        "reticulate's conversion; to save and restore use save_optimizer()/load_optimizer())"),
        state_dict)
    list(state_dict)
  }
)

#' @export
print.pyfastopt_hypers <- function(x, ...) {
  groups <- reticulate::py_to_r(reticulate::py_get_attr(x, "items"))
  cat(sprintf("<hypers of %d parameter group%s: opt$hypers$items[[i]] is group i>\n",
              length(groups), if (length(groups) == 1) "" else "s"))
  print(groups, ...)
  invisible(x)
}

#' @export
print.pyfastopt_state <- function(x, ...) {
  opt <- attr(x, "pyfastopt_optimizer", exact = TRUE)
  entries <- .bridge()$state_entries(opt)
  n <- length(entries)
  cat(sprintf("<state of %d param%s (0-based positions); opt$state[param] is one param's>\n",
              n, if (n == 1) "" else "s"))
  for (e in entries) {
    cat(sprintf("[group %d, param %d]\n", e$group, e$index))
    print(e$entry, ...)
  }
  invisible(x)
}

#' @rawNamespace S3method("$", pyfastopt.optimizer.Optimizer, "$.pyfastopt_optimizer")
NULL
