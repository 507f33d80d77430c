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

.need_lr <- function(lr_missing) {
  if (lr_missing) stop("`lr` is missing, with no default: give a learning rate, e.g. lr = 0.1", call. = FALSE)
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
#' R. A plain R function also works as a stepper, but then Python calls R for
#' every parameter at every step, which is much slower, and the function has
#' no `defaults`.
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
#' @examples
#' if (pyfastopt_available()) {
#'   params <- L(lapply(0:3, function(x) tst_param(x)))
#'   opt <- Optimizer(params, list(weight_decay, sgd_step), lr = 0.1, wd = 0.1)
#'   opt$step()
#'   str(params$items)
#'   opt$hypers
#' }
Optimizer <- function(params, cbs, ...) {
  if (missing(params)) return(.py_factory("Optimizer"))
  if (missing(cbs)) .arg_error("cbs", "a stepper function or a list of them", NULL)
  f <- .py_factory("Optimizer")
  .call_py("Optimizer()", f, c(list(.params(params), .cbs(cbs)),
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
#' * `Adam`: Adam, with fastai's defaults (`sqr_mom = 0.99`, `eps = 1e-5`,
#'   decoupled `wd = 0.01`).
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
#' @param params The parameters: a tensor, a list (or [L]) of tensors, a list
#'   of such lists (parameter groups) or a Python iterable such as
#'   `model$parameters()`.
#' @param lr Learning rate (a number, or one per parameter group).
#' @param mom Momentum.
#' @param sqr_mom Momentum of the squared gradients.
#' @param eps Added to denominators.
#' @param wd Weight decay.
#' @param decouple_wd `TRUE`: true weight decay; `FALSE`: L2 regularisation.
#' @param beta SAdam's softplus beta (`0`: plain RAdam).
#' @param nu_1,nu_2 QHAdam's discount factors.
#' @param clip Clip LARC's layer-wise learning rate at `lr`?
#' @param trust_coeff LARC's trust coefficient.
#' @param k,alpha Lookahead's synchronisation period (a whole number) and
#'   step size, for `ranger`.
#' @return A Python optimizer.
#' @name optimizers
#' @examples
#' if (pyfastopt_available()) {
#'   params <- L(lapply(0:3, function(x) tst_param(x)))
#'   opt <- SGD(params, lr = 0.1, mom = 0.9)
#'   opt$step()
#'   str(params$items)
#'   p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#'   RMSProp(p, lr = 0.1)$step()
#'   Adam(p, lr = 0.1)$step()
#'   RAdam(p, lr = 0.1)$step()
#'   QHAdam(p, lr = 0.1)$step()
#'   Larc(list(p), lr = 0.1)$step()
#'   Lamb(p, lr = 0.1)$step()
#'   ranger(p, lr = 0.1)$step()
#'   p
#' }
NULL

#' @rdname optimizers
#' @export
SGD <- function(params, lr, mom = 0, wd = 0, decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("SGD"))
  .need_lr(missing(lr))
  .factory("SGD", params, list(lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE),
                               wd = .num(wd, "wd", TRUE), decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' @rdname optimizers
#' @export
RMSProp <- function(params, lr, mom = 0, sqr_mom = 0.99, eps = 1e-8, wd = 0, decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("RMSProp"))
  .need_lr(missing(lr))
  .factory("RMSProp", params, list(
    lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE), sqr_mom = .num(sqr_mom, "sqr_mom", TRUE),
    eps = .num(eps, "eps", TRUE), wd = .num(wd, "wd", TRUE), decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' @rdname optimizers
#' @export
Adam <- function(params, lr, mom = 0.9, sqr_mom = 0.99, eps = 1e-5, wd = 0.01, decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("Adam"))
  .need_lr(missing(lr))
  .factory("Adam", params, list(
    lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE), sqr_mom = .num(sqr_mom, "sqr_mom", TRUE),
    eps = .num(eps, "eps", TRUE), wd = .num(wd, "wd", TRUE), decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' @rdname optimizers
#' @export
RAdam <- function(params, lr, mom = 0.9, sqr_mom = 0.99, eps = 1e-5, wd = 0, beta = 0,
                  decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("RAdam"))
  .need_lr(missing(lr))
  .factory("RAdam", params, list(
    lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE), sqr_mom = .num(sqr_mom, "sqr_mom", TRUE),
    eps = .num(eps, "eps", TRUE), wd = .num(wd, "wd", TRUE), beta = .num(beta, "beta", TRUE),
    decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' @rdname optimizers
#' @export
QHAdam <- function(params, lr, mom = 0.999, sqr_mom = 0.999, nu_1 = 0.7, nu_2 = 1.0, eps = 1e-8,
                   wd = 0, decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("QHAdam"))
  .need_lr(missing(lr))
  .factory("QHAdam", params, list(
    lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE), sqr_mom = .num(sqr_mom, "sqr_mom", TRUE),
    nu_1 = .num(nu_1, "nu_1", TRUE), nu_2 = .num(nu_2, "nu_2", TRUE), eps = .num(eps, "eps", TRUE),
    wd = .num(wd, "wd", TRUE), decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' @rdname optimizers
#' @export
Larc <- function(params, lr, mom = 0.9, clip = TRUE, trust_coeff = 0.02, eps = 1e-8, wd = 0,
                 decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("Larc"))
  .need_lr(missing(lr))
  .factory("Larc", params, list(
    lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE), clip = .flag(clip, "clip"),
    trust_coeff = .num(trust_coeff, "trust_coeff", TRUE), eps = .num(eps, "eps", TRUE),
    wd = .num(wd, "wd", TRUE), decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' @rdname optimizers
#' @export
Lamb <- function(params, lr, mom = 0.9, sqr_mom = 0.99, eps = 1e-5, wd = 0, decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("Lamb"))
  .need_lr(missing(lr))
  .factory("Lamb", params, list(
    lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE), sqr_mom = .num(sqr_mom, "sqr_mom", TRUE),
    eps = .num(eps, "eps", TRUE), wd = .num(wd, "wd", TRUE), decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' @rdname optimizers
#' @export
ranger <- function(params, lr, mom = 0.95, wd = 0.01, eps = 1e-6, k = 6L, alpha = 0.5,
                   sqr_mom = 0.99, beta = 0, decouple_wd = TRUE) {
  if (missing(params)) return(.py_factory("ranger"))
  .need_lr(missing(lr))
  .factory("ranger", params, list(
    lr = .num(lr, "lr", TRUE), mom = .num(mom, "mom", TRUE), wd = .num(wd, "wd", TRUE),
    eps = .num(eps, "eps", TRUE), k = .int(k, "k"), alpha = .num(alpha, "alpha"),
    sqr_mom = .num(sqr_mom, "sqr_mom", TRUE), beta = .num(beta, "beta", TRUE),
    decouple_wd = .flag(decouple_wd, "decouple_wd")))
}

#' Lookahead
#'
#' Wraps an optimizer: every `k` steps the "slow" weights move a fraction
#' `alpha` towards the "fast" weights of the inner optimizer, and the fast
#' weights are reset to them. Everything else (`hypers`, `state`,
#' `set_hyper()`, ...) goes to the inner optimizer.
#'
#' @param opt An optimizer, such as `SGD(params, lr = 0.1)`.
#' @param k Synchronisation period, a whole number (`6` and `6L` both work).
#' @param alpha Step size of the slow weights.
#' @return A Python `Lookahead` optimizer.
#' @export
#' @examples
#' if (pyfastopt_available()) {
#'   params <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#'   opt <- Lookahead(SGD(params, lr = 0.1), k = 6)
#'   for (i in 1:6) opt$step()
#'   params
#' }
Lookahead <- function(opt, k = 6L, alpha = 0.5) {
  if (missing(opt)) return(.py_factory("Lookahead"))
  if (!inherits(opt, "python.builtin.object")) .arg_error("opt", "an optimizer (e.g. SGD(params, lr = 0.1))", opt)
  f <- .py_factory("Lookahead")
  .call_py("Lookahead()", f, list(opt, k = .int(k, "k"), alpha = .num(alpha, "alpha")))
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
#'   groups?
#' @param ... Arguments of the torch optimizer (`lr = 0.01`, `momentum = 0.9`).
#' @return A Python `OptimWrapper`.
#' @export
#' @examples
#' if (pyfastopt_available()) {
#'   torch <- reticulate::import("torch")
#'   p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#'   opt <- OptimWrapper(list(p), torch$optim$SGD, lr = 0.1, momentum = 0.9)
#'   opt$hypers
#'   opt$step()
#'   p
#' }
OptimWrapper <- function(params = NULL, opt = NULL, hp_map = NULL, convert_groups = TRUE, ...) {
  f <- .py_factory("OptimWrapper")
  if (is.null(params) && is.null(opt)) .arg_error("params", "given when `opt` is NULL (or give `opt`)", NULL)
  if (!is.null(opt) && !inherits(opt, "python.builtin.object")) {
    .arg_error("opt", "a torch optimizer class or a built torch optimizer", opt)
  }
  if (!is.null(hp_map) && !is.list(hp_map) && !inherits(hp_map, "python.builtin.object")) {
    .arg_error("hp_map", "a named list or NULL", hp_map)
  }
  args <- list(params = if (is.null(params)) NULL else .params(params), opt = opt, hp_map = hp_map,
               convert_groups = .flag(convert_groups, "convert_groups"))
  .call_py("OptimWrapper()", f, c(args, .hyper_args(list(...), "OptimWrapper()")))
}
