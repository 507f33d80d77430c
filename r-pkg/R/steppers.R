# Steppers are R functions of class "pyfastopt_stepper" carrying the name of
# the Python function. Called from R they call Python once. Handed to an
# optimizer (or to any Python call), r_to_py() turns them into the Python
# function itself, so Python never calls back into R during step() and the
# function's `defaults` (e.g. weight_decay's wd = 0) are kept.

.stepper_py <- function(f) .pyfn("pyfastopt", attr(f, "py_name"))

.invoke_stepper <- function(name, env, dots) {
  self <- get(name, envir = asNamespace("pyfastopt"))
  fmls <- setdiff(names(formals(self)), "...")
  args <- list()
  for (a in fmls) {
    if (eval(call("missing", as.name(a)), env)) next
    v <- get(a, envir = env)
    if (!is.null(v)) {
      v <- if (a == "step") .int(v, a) else if (a %in% c("dampening", "do_wd", "clip")) .flag(v, a) else v
    }
    args[[a]] <- v
  }
  res <- .call_py(paste0(name, "()"), .stepper_py(self), c(args, dots))
  if (is.null(res)) invisible(NULL) else res
}

.make_stepper <- function(name, formals_list) {
  f <- function() NULL
  formals(f) <- formals_list
  body(f) <- substitute(.invoke_stepper(NAME, environment(), list(...)), list(NAME = name))
  if (!"..." %in% names(formals_list)) {
    body(f) <- substitute(.invoke_stepper(NAME, environment(), list()), list(NAME = name))
  }
  environment(f) <- asNamespace("pyfastopt")
  structure(f, class = c("pyfastopt_stepper", "function"), py_name = name)
}

#' Steppers: the building blocks of an optimizer
#'
#' Each stepper is fastai's function of the same name (see the Python
#' package `pyfastopt`). Called from R, a stepper updates `p` (a tensor with
#' a `grad`) in place and returns what Python returns: `NULL` (invisibly), or
#' a named list of new state such as `list(grad_avg = <tensor>)`.
#'
#' Passed to [Optimizer()] (`Optimizer(params, list(weight_decay, sgd_step),
#' lr = 0.1)`), a stepper reaches Python as the Python function itself: an
#' optimizer step makes no call back into R, and the stepper's `defaults`
#' (`weight_decay$defaults` is `list(wd = 0)`) fill in hyper-parameters that
#' are not given. `stepper$name` reads an attribute of the Python function.
#'
#' * `sgd_step`: `p <- p - lr * grad`.
#' * `weight_decay`: decoupled weight decay, `p <- p * (1 - lr * wd)`.
#' * `l2_reg`: L2 regularisation, `grad <- grad + wd * p`.
#' * `average_grad`: moving average of the gradients, `grad_avg`.
#' * `average_sqr_grad`: moving average of the squared gradients, `sqr_avg`.
#' * `momentum_step`: `p <- p - lr * grad_avg`.
#' * `rms_prop_step`: `p <- p - lr * x / (sqrt(sqr_avg) + eps)`.
#' * `step_stat`: counts steps, `step`.
#' * `debias`: `damp * (1 - mom^step) / (1 - mom)` (a number, no tensor).
#' * `adam_step`, `radam_step`, `qhadam_step`, `lamb_step`: the steps of
#'   [Adam()], [RAdam()], [QHAdam()] and [Lamb()].
#' * `larc_layer_lr`, `larc_step`: the layer-wise learning rate and step of
#'   [Larc()].
#' * `lion_step`: [Lion()]'s step, `p <- p - lr * sign(mom * grad_avg + (1 - mom) * grad)`, then
#'   `grad_avg <- sqr_mom * grad_avg + (1 - sqr_mom) * grad`.
#'
#' @param p A tensor whose `grad` is set (see [tst_param()]).
#' @param lr Learning rate.
#' @param wd Weight decay.
#' @param do_wd Apply weight decay to this parameter?
#' @param mom Momentum (or the `mom` of [debias()]).
#' @param sqr_mom Momentum of the squared gradients.
#' @param dampening Dampen the average (`(1 - mom)` factor on the new value)?
#' @param grad_avg,sqr_avg Current averages (`NULL`: start from zeros).
#' @param eps Added to the denominator.
#' @param step Step count (a whole number; `1` and `1L` both work).
#' @param damp Dampening factor of [debias()].
#' @param beta SAdam's softplus beta for [radam_step()] (`0`: none).
#' @param nu_1,nu_2 QHAdam's immediate discount factors.
#' @param trust_coeff LARC's trust coefficient.
#' @param clip Clip the layer-wise learning rate at `lr`?
#' @param local_lr The layer-wise learning rate from [larc_layer_lr()].
#' @param ... Other state and hyper-parameters, ignored by the stepper (as
#'   the optimizer passes them all).
#' @return `NULL` (invisibly) or a named list of state; `debias()` a number.
#' @name steppers
#' @examplesIf pyfastopt_available()
#' p <- tst_param(1, 0.1)
#' sgd_step(p, 1)
#' p
#' p <- tst_param(1, 0.1)
#' weight_decay(p, 1, 0.1)
#' p
#' p <- tst_param(1, 0.1)
#' l2_reg(p, 1, 0.1)
#' p$grad
#' p <- tst_param(c(1, 2, 3), c(4, 5, 6))
#' state <- average_grad(p, mom = 0.9)
#' state <- average_grad(p, mom = 0.9, grad_avg = state$grad_avg)
#' state$grad_avg
#' average_sqr_grad(p, sqr_mom = 0.99)$sqr_avg
#' momentum_step(p, lr = 0.1, grad_avg = state$grad_avg)
#' rms_prop_step(p, lr = 0.1, sqr_avg = p$grad^2, eps = 1e-8)
#' step_stat(p, step = 1)
#' debias(0.9, 0.1, 1)
#' st <- list(grad_avg = p$grad * 0.1, sqr_avg = p$grad^2 * 0.01)
#' adam_step(p, lr = 0.1, mom = 0.9, step = 1, sqr_mom = 0.99,
#'           grad_avg = st$grad_avg, sqr_avg = st$sqr_avg, eps = 1e-5)
#' radam_step(p, lr = 0.1, mom = 0.9, step = 1, sqr_mom = 0.99,
#'            grad_avg = st$grad_avg, sqr_avg = st$sqr_avg, eps = 1e-5, beta = 0)
#' qhadam_step(p, lr = 0.1, mom = 0.999, sqr_mom = 0.999, sqr_avg = st$sqr_avg,
#'             nu_1 = 0.7, nu_2 = 1, step = 1, grad_avg = st$grad_avg, eps = 1e-8)
#' lamb_step(p, lr = 0.1, mom = 0.9, step = 1, sqr_mom = 0.99,
#'           grad_avg = st$grad_avg, sqr_avg = st$sqr_avg, eps = 1e-5)
#' local <- larc_layer_lr(p, lr = 0.1, trust_coeff = 0.02, wd = 0, eps = 1e-8)
#' larc_step(p, local_lr = local$local_lr)
#' weight_decay$defaults
NULL

#' @rdname steppers
#' @usage sgd_step(p, lr, ...)
#' @export
sgd_step <- .make_stepper("sgd_step", alist(p = , lr = , ... = ))

#' @rdname steppers
#' @usage weight_decay(p, lr, wd, do_wd = TRUE, ...)
#' @export
weight_decay <- .make_stepper("weight_decay", alist(p = , lr = , wd = , do_wd = TRUE, ... = ))

#' @rdname steppers
#' @usage l2_reg(p, lr, wd, do_wd = TRUE, ...)
#' @export
l2_reg <- .make_stepper("l2_reg", alist(p = , lr = , wd = , do_wd = TRUE, ... = ))

#' @rdname steppers
#' @usage average_grad(p, mom, dampening = FALSE, grad_avg = NULL, ...)
#' @export
average_grad <- .make_stepper("average_grad",
                              alist(p = , mom = , dampening = FALSE, grad_avg = NULL, ... = ))

#' @rdname steppers
#' @usage average_sqr_grad(p, sqr_mom, dampening = TRUE, sqr_avg = NULL, ...)
#' @export
average_sqr_grad <- .make_stepper("average_sqr_grad",
                                  alist(p = , sqr_mom = , dampening = TRUE, sqr_avg = NULL, ... = ))

#' @rdname steppers
#' @usage momentum_step(p, lr, grad_avg, ...)
#' @export
momentum_step <- .make_stepper("momentum_step", alist(p = , lr = , grad_avg = , ... = ))

#' @rdname steppers
#' @usage rms_prop_step(p, lr, sqr_avg, eps, grad_avg = NULL, ...)
#' @export
rms_prop_step <- .make_stepper("rms_prop_step",
                               alist(p = , lr = , sqr_avg = , eps = , grad_avg = NULL, ... = ))

#' @rdname steppers
#' @usage step_stat(p, step = 0L, ...)
#' @export
step_stat <- .make_stepper("step_stat", alist(p = , step = 0L, ... = ))

#' @rdname steppers
#' @usage debias(mom, damp, step)
#' @export
debias <- .make_stepper("debias", alist(mom = , damp = , step = ))

#' @rdname steppers
#' @usage adam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, ...)
#' @export
adam_step <- .make_stepper("adam_step", alist(p = , lr = , mom = , step = , sqr_mom = ,
                                              grad_avg = , sqr_avg = , eps = , ... = ))

#' @rdname steppers
#' @usage radam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, beta, ...)
#' @export
radam_step <- .make_stepper("radam_step", alist(p = , lr = , mom = , step = , sqr_mom = ,
                                                grad_avg = , sqr_avg = , eps = , beta = , ... = ))

#' @rdname steppers
#' @usage qhadam_step(p, lr, mom, sqr_mom, sqr_avg, nu_1, nu_2, step, grad_avg, eps, ...)
#' @export
qhadam_step <- .make_stepper("qhadam_step", alist(p = , lr = , mom = , sqr_mom = , sqr_avg = ,
                                                  nu_1 = , nu_2 = , step = , grad_avg = , eps = ,
                                                  ... = ))

#' @rdname steppers
#' @usage larc_layer_lr(p, lr, trust_coeff, wd, eps, clip = TRUE, ...)
#' @export
larc_layer_lr <- .make_stepper("larc_layer_lr", alist(p = , lr = , trust_coeff = , wd = , eps = ,
                                                      clip = TRUE, ... = ))

#' @rdname steppers
#' @usage larc_step(p, local_lr, grad_avg = NULL, ...)
#' @export
larc_step <- .make_stepper("larc_step", alist(p = , local_lr = , grad_avg = NULL, ... = ))

#' @rdname steppers
#' @usage lamb_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, ...)
#' @export
lamb_step <- .make_stepper("lamb_step", alist(p = , lr = , mom = , step = , sqr_mom = ,
                                              grad_avg = , sqr_avg = , eps = , ... = ))

#' @rdname steppers
#' @usage lion_step(p, lr, mom, sqr_mom, grad_avg = NULL, ...)
#' @export
lion_step <- .make_stepper("lion_step", alist(p = , lr = , mom = , sqr_mom = , grad_avg = NULL,
                                              ... = ))

#' Convert a stepper to Python
#'
#' The S3 method of [reticulate::r_to_py()] for steppers: it returns the
#' Python function itself (not an R callback).
#'
#' @param x A stepper such as [sgd_step].
#' @param convert Unused; for the generic.
#' @return The Python function.
#' @importFrom reticulate r_to_py
#' @export
#' @examplesIf pyfastopt_available()
#' reticulate::r_to_py(sgd_step)
r_to_py.pyfastopt_stepper <- function(x, convert = FALSE) .stepper_py(x)

#' @export
print.pyfastopt_stepper <- function(x, ...) {
  sig <- paste(deparse(args(x)), collapse = "")
  sig <- sub(" *NULL$", "", sub("^function ", "", sig))
  cat(sprintf("<pyfastopt stepper> %s%s, calls Python pyfastopt.%s\n",
              attr(x, "py_name"), sig, attr(x, "py_name")))
  invisible(x)
}

#' @export
`$.pyfastopt_stepper` <- function(x, name) {
  f <- .stepper_py(x)
  if (!reticulate::py_has_attr(f, name)) return(NULL)
  reticulate::py_to_r(reticulate::py_get_attr(f, name))
}

#' Write a stepper in R
#'
#' Any R function `function(p, lr, ..., <state>)` can be a stepper of [Optimizer()]: it gets
#' the parameter `p` (with `p$data` and `p$grad`), its group's hyper-parameters and its state
#' by name, updates `p$data` in place with torch's methods (`p$data$add_(p$grad, alpha = -lr)`)
#' and returns `NULL` or a named list of new state (`list(grad_avg = grad_avg)`). A function
#' without `...` receives only the arguments it declares. Errors name the stepper (the name it
#' was given as, or `attr(f, "name")`).
#'
#' By default Python calls an R stepper once per parameter and step, which costs one R call
#' (tens of microseconds) each time. `multi_tensor(f)` declares that `f` works on a whole
#' bucket of parameters at once, the R counterpart of Python's `@multi_tensor`: then `p$data`,
#' `p$grad` and tensor state are lists of tensors (`TensorList`s) answering the same in-place
#' methods (`add_`, `mul_`, `addcmul_`, `lerp_`, `sqrt`, `clone`, `zero_`, ...) with one
#' `torch._foreach_*` call for the whole list, and a step costs one R call per stepper per
#' bucket. Only tensor methods may be used then (no `as.numeric(p)`, no per-element R code),
#' and a new state tensor is made with a method of a list, e.g. `p$grad$clone()$zero_()`.
#'
#' @param f An R function `function(p, ...)`.
#' @param defaults A named list of default hyper-parameters (as a Python stepper's
#'   `defaults`), or `NULL`.
#' @return `f`, marked (attributes `multi_tensor`, and `defaults` when given).
#' @export
#' @examplesIf pyfastopt_available()
#' my_average <- multi_tensor(function(p, mom, grad_avg = NULL, ...) {
#'   if (is.null(grad_avg)) grad_avg <- p$grad$clone()$zero_()
#'   grad_avg$mul_(mom)$add_(p$grad)
#'   list(grad_avg = grad_avg)
#' }, defaults = list(mom = 0.9))
#' my_step <- multi_tensor(function(p, lr, grad_avg, ...) {
#'   p$data$add_(grad_avg, alpha = -lr)
#'   NULL
#' })
#' params <- L(lapply(0:3, function(x) tst_param(x)))
#' opt <- Optimizer(params, list(my_average, my_step), lr = 0.1)
#' opt$step()
#' opt$step()
#' str(params$items)
multi_tensor <- function(f, defaults = NULL) {
  if (!is.function(f) || inherits(f, "pyfastopt_stepper"))
    .arg_error("f", "an R function function(p, ...)", f)
  if (!is.null(defaults) && !(is.list(defaults) && length(defaults) && !is.null(names(defaults)) &&
                              all(nzchar(names(defaults)))))
    .arg_error("defaults", "a named list or NULL", defaults)
  attr(f, "multi_tensor") <- TRUE
  if (!is.null(defaults)) attr(f, "defaults") <- defaults
  f
}

# `$` on the lists of tensors a multi_tensor() R stepper works on (TensorList, ParamBatch):
# reticulate's own `$` builds a full R wrapper around every bound method, which costs more than
# the foreach call itself; this one keeps a method a thin closure over py_call. Attributes
# (`p$data`, `p$grad`) and results stay Python objects, as a TensorList is one.
.tensor_list_dollar <- function(x, name) {
  a <- tryCatch(reticulate::py_get_attr(x, name), error = function(e) .py_error(paste0("$", name), e))
  if (inherits(a, c("python.builtin.method", "python.builtin.builtin_function_or_method"))) {
    return(function(...) {
      res <- reticulate::py_call(a, ...)
      if (inherits(res, "python.builtin.NoneType")) invisible(NULL) else reticulate::py_to_r(res)
    })
  }
  reticulate::py_to_r(a)
}

#' @rawNamespace S3method("$", pyfastopt.tensor_list.TensorList, .tensor_list_dollar)
#' @rawNamespace S3method("$", pyfastopt.tensor_list.ParamBatch, .tensor_list_dollar)
NULL
