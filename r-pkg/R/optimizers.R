# Thin wrappers: check and convert the R arguments, then call the Python
# factory. No optimizer logic lives in R.

.hyper_args <- function(args, where) {
  if (length(args) == 0) return(list())
  nm <- names(args)
  if (is.null(nm) || any(nm == "")) {
    stop(sprintf("%s: hyper-parameters in `...` must be named, e.g. lr = 0.1", where), call. = FALSE)
  }
  for (n in nm) {
    v <- args[[n]]
    if (is.numeric(v) && length(v) > 1) args[[n]] <- as.list(as.numeric(v))
  }
  args
}

.factory <- function(name, params, args) {
  f <- .pyfn("pyfastopt", name)
  .call_py(paste0(name, "()"), f, c(list(.params(params)), args))
}

.py_factory <- function(name) .pyfn("pyfastopt", name)

#' The general optimizer
#'
#' `Optimizer(params, cbs, ...)` is fastai's `Optimizer` (also a
#' `torch.optim.Optimizer`): each `step()` calls every stepper of `cbs`, in
#' order, on every parameter that has a gradient, with the parameter's state
#' and its group's hyper-parameters.
#'
#' The result is the Python object; use its methods with `$`:
#' `opt$step()`, `opt$zero_grad()`, `opt$freeze_to(1)`, `opt$freeze()`,
#' `opt$unfreeze()`, `opt$set_hyper("lr", 0.01)`, `opt$set_hypers(lr = 0.01)`,
#' `opt$clear_state()`, `opt$state_dict()`, `opt$load_state_dict(sd)`, and
#' the fields `opt$hypers` (an [L] of one named list per parameter group;
#' replacing `opt$hypers$items[[1]][["lr"]]` takes effect), `opt$state`
#' (indexed by parameter: `opt$state[p]`), `opt$param_lists`,
#' `opt$param_groups`.
#'
#' Steppers exported by this package ([sgd_step], [weight_decay], ...) reach
#' Python as the Python functions themselves, so a step never calls back into
#' R. An R function works as a stepper too (see [multi_tensor()]): by default
#' Python calls it once per parameter per step; marked with [multi_tensor()] it
#' is called once per bucket of parameters, which is much faster. Its errors
#' name it, and without `...` it receives only the arguments it declares.
#'
#' @param params The parameters: a tensor, a list (or [L]) of tensors, a list
#'   of such lists (one parameter group each) or a Python iterable such as
#'   `model$parameters()`.
#' @param cbs A stepper or a list of steppers, called in order.
#' @param ... Hyper-parameters, named (`lr = 0.1`, `wd = 0.01`). A vector
#'   gives one value per parameter group.
#' @return A Python `pyfastopt.Optimizer`.
#' @seealso [SGD()], [Adam()] and the other factories; [steppers].
#' @export
#' @examplesIf pyfastopt_available()
#' params <- L(lapply(0:3, function(x) tst_param(x)))
#' opt <- Optimizer(params, list(weight_decay, sgd_step), lr = 0.1, wd = 0.1)
#' opt$step()
#' str(params$items)
#' opt$hypers
Optimizer <- function(params, cbs, ...) {
  if (missing(params)) return(.py_factory("Optimizer"))
  if (missing(cbs)) .arg_error("cbs", "a stepper function or a list of them", NULL)
  f <- .py_factory("Optimizer")
  .call_py("Optimizer()", f, c(list(.params(params), .cbs(cbs, substitute(cbs))),
                               .hyper_args(list(...), "Optimizer()")))
}

#' Optimizers
#'
#' fastai's optimizer factories, with fastai's names and defaults. Each
#' returns an [Optimizer()] (a Python object: call `opt$step()`,
#' `opt$zero_grad()`, ...). Called without arguments, a factory returns the
#' Python function itself (to pass as an `opt_func`).
#'
#' * `SGD`: SGD with `lr`, momentum `mom` and weight decay `wd`.
#' * `RMSProp`: RMSProp; `sqr_mom` is the course's alpha. (Unlike fastai, which
#'   ignores it, `eps` is honoured.)
#' * `Adam`: Adam, with fastai's defaults (decoupled weight decay).
#' * `RAdam`: rectified Adam (plain momentum SGD while the variance is not
#'   tractable); `beta > 0` gives SAdam's softplus.
#' * `QHAdam`: quasi-hyperbolic Adam.
#' * `Larc`: LARS/LARC, a layer-wise learning rate from `trust_coeff`, clipped
#'   at `lr` when `clip = TRUE`.
#' * `Lamb`: LAMB, LARC applied to Adam.
#' * `ranger`: `Lookahead(RAdam(...))`.
#'
#' Weight decay `wd` is true (decoupled) weight decay when
#' `decouple_wd = TRUE`, L2 regularisation otherwise.
#'
#' The hyper-parameters and their defaults are those of the Python factory of the same name
#' (listed below, read from Python when this page was made); the R functions pass what you give
#' on to it and restate none of them.
#'
#' @param params The parameters: a tensor, a list (or [L]) of tensors, a list
#'   of such lists (parameter groups) or a Python iterable such as
#'   `model$parameters()`.
#' @param ... Hyper-parameters, named (`lr = 0.1`, `mom = 0.9`, ...; unnamed ones follow the
#'   Python factory's order): a number, or one number per parameter group; `TRUE`/`FALSE` for
#'   `decouple_wd` and `clip`; a whole number for `k`.
#' @return A Python optimizer.
#' @name optimizers
#' @eval .factory_docs()
#' @examplesIf pyfastopt_available()
#' params <- L(lapply(0:3, function(x) tst_param(x)))
#' opt <- SGD(params, lr = 0.1, mom = 0.9)
#' opt$step()
#' str(params$items)
#' p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#' RMSProp(p, lr = 0.1)$step()
#' Adam(p, lr = 0.1)$step()
#' RAdam(p, lr = 0.1)$step()
#' QHAdam(p, lr = 0.1)$step()
#' Larc(list(p), lr = 0.1)$step()
#' Lamb(p, lr = 0.1)$step()
#' ranger(p, lr = 0.1)$step()
#' p
NULL

# The factories exported to R: each is `function(params, ...)` calling the Python factory of
# that name, so its hyper-parameters and defaults live only in Python. Adding a Python factory
# to R is adding its name here.
.factory_names <- c("SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Larc", "Lamb", "ranger", "Lion")

.make_factory <- function(name) {
  f <- function(params, ...) NULL
  body(f) <- substitute(.call_factory(NAME, params, ...), list(NAME = name))
  f
}
for (.name in .factory_names) assign(.name, .make_factory(.name))
rm(.name)

# Hyper-parameters that are flags or Python ints, by name (the rest are numbers).
.flag_hypers <- c("decouple_wd", "clip", "dampening", "do_wd")
.int_hypers <- c("k")

# Names and defaults of a Python callable's parameters (cached).
.py_signature <- function(name) {
  key <- paste0("sig.", name)
  sig <- .pkg$fns[[key]]
  if (is.null(sig)) {
    sig <- reticulate::py_to_r(reticulate::py_call(
      reticulate::py_get_attr(.bridge(), "factory_defaults"), .py_factory(name)))
    names(sig) <- vapply(sig, `[[`, "", "name")
    .pkg$fns[[key]] <- sig
  }
  sig
}

.hyper_arg <- function(v, n) {
  if (n %in% .flag_hypers) return(.flag(v, n))
  if (n %in% .int_hypers) return(.int(v, n))
  .hyper_value(v, n)
}

.call_factory <- function(name, params, ...) {
  if (missing(params)) return(.py_factory(name))
  where <- paste0(name, "()")
  args <- list(...)
  sig <- .py_signature(name)
  nm <- names(args) %||% rep("", length(args))
  # unnamed arguments take the Python factory's positions, as in Python
  positional <- which(!nzchar(nm))
  if (length(positional) > length(sig) - 1L)
    stop(sprintf("%s: too many unnamed arguments (%d)", where, length(positional)), call. = FALSE)
  nm[positional] <- names(sig)[1L + seq_along(positional)]
  names(args) <- nm
  if (anyDuplicated(nm)) stop(sprintf("%s: `%s` is given twice", where, nm[anyDuplicated(nm)]), call. = FALSE)
  for (n in names(sig)[-1]) {
    if (!sig[[n]]$has_default && !n %in% nm)
      stop(sprintf("`%s` is missing, with no default%s", n,
                   if (n == "lr") ": give a learning rate, e.g. lr = 0.1" else ""), call. = FALSE)
  }
  for (n in nm) args[[n]] <- .hyper_arg(args[[n]], n)
  .factory(name, params, args)
}

# Roxygen lines for the factories: usage, exports and the defaults read from Python (so the
# help page shows them without R restating them).
.factory_docs <- function() {
  lines <- c(paste0("@usage ", .factory_names, "(params, ...)"),
             paste("@export", .factory_names), paste("@aliases", paste(.factory_names, collapse = " ")))
  defaults <- tryCatch(.factory_defaults_text(), error = function(e) NULL)
  if (!is.null(defaults)) lines <- c(lines, paste0("@section Defaults (from Python):\n", defaults))
  lines
}

.factory_defaults_text <- function() {
  one <- function(name) {
    sig <- .py_signature(name)[-1]
    parts <- vapply(sig, function(p) {
      if (p$has_default) paste(p$name, "=", paste(deparse(p$default), collapse = "")) else p$name
    }, "")
    sprintf("* `%s(params, %s)`", name, paste(parts, collapse = ", "))
  }
  paste(vapply(.factory_names, one, ""), collapse = "\n")
}

#' Lookahead
#'
#' Wraps an optimizer: every `k` steps the "slow" weights move a fraction
#' `alpha` towards the "fast" weights of the inner optimizer, and the fast
#' weights are reset to them. Everything else (`hypers`, `set_hyper()`, ...)
#' goes to the inner optimizer. `opt$state` is the inner optimizer's state,
#' where each parameter's entry also shows its slow weight (`lookahead_slow`)
#' and the step count (`lookahead_count`) once the first step has run, as
#' torch's checkpointing tools expect; `opt$slow_weights` and `opt$count`
#' are fastai's fields.
#'
#' @param opt An optimizer, such as `SGD(params, lr = 0.1)`.
#' @param ... `k`, the synchronisation period (a whole number: `6` and `6L` both work), and
#'   `alpha`, the step size of the slow weights; their defaults are the Python function's.
#' @return A Python `Lookahead` optimizer.
#' @export
#' @examplesIf pyfastopt_available()
#' params <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#' opt <- Lookahead(SGD(params, lr = 0.1), k = 6)
#' for (i in 1:6) opt$step()
#' params
Lookahead <- function(opt, ...) {
  if (missing(opt)) return(.py_factory("Lookahead"))
  if (!inherits(opt, "python.builtin.object")) .arg_error("opt", "an optimizer (e.g. SGD(params, lr = 0.1))", opt)
  args <- list(...)
  nm <- names(args) %||% rep("", length(args))
  if (any(!nzchar(nm))) stop("Lookahead(): give `k` and `alpha` by name", call. = FALSE)
  for (n in nm) args[[n]] <- .hyper_arg(args[[n]], n)
  .call_py("Lookahead()", .py_factory("Lookahead"), c(list(opt), args))
}

#' Wrap a torch optimizer
#'
#' `OptimWrapper` gives a `torch.optim` optimizer fastai's interface
#' (`hypers` with fastai's names such as `mom` and `wd`, `set_hyper()`,
#' freezing), for example to schedule a torch optimizer like the others.
#'
#' @param params Parameters (as for [Optimizer()]); `NULL` when `opt` is an
#'   optimizer already built.
#' @param opt A torch optimizer class (e.g. `torch$optim$SGD`) or an optimizer
#'   already built.
#' @param hp_map Mapping of torch hyper-parameter names to fastai's
#'   (`NULL`: fastai's `pytorch_hp_map`), a named list.
#' @param convert_groups Turn lists of parameter lists into torch parameter
#'   groups? Left out, the Python function's default.
#' @param ... Arguments of the torch optimizer (`lr = 0.01`, `momentum = 0.9`).
#' @return A Python `OptimWrapper`.
#' @export
#' @examplesIf pyfastopt_available()
#' torch <- reticulate::import("torch")
#' p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#' opt <- OptimWrapper(list(p), torch$optim$SGD, lr = 0.1, momentum = 0.9)
#' opt$hypers
#' opt$step()
#' p
OptimWrapper <- function(params = NULL, opt = NULL, hp_map = NULL, convert_groups, ...) {
  f <- .py_factory("OptimWrapper")
  if (is.null(params) && is.null(opt)) .arg_error("params", "given when `opt` is NULL (or give `opt`)", NULL)
  if (!is.null(opt) && !inherits(opt, "python.builtin.object")) {
    .arg_error("opt", "a torch optimizer class or a built torch optimizer", opt)
  }
  if (!is.null(hp_map) && !is.list(hp_map) && !inherits(hp_map, "python.builtin.object")) {
    .arg_error("hp_map", "a named list or NULL", hp_map)
  }
  args <- list(params = if (is.null(params)) NULL else .params(params), opt = opt, hp_map = hp_map)
  # its default is Python's (not restated here)
  if (!missing(convert_groups)) args$convert_groups <- .flag(convert_groups, "convert_groups")
  .call_py("OptimWrapper()", f, c(args, .hyper_args(list(...), "OptimWrapper()")))
}
