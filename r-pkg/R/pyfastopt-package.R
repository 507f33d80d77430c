#' pyfastopt: fastai's optimizers on torch, from R
#'
#' The R side of the Python package `pyfastopt` (fastai 2.8.12's optimizers:
#' [Optimizer()], [SGD()], [RMSProp()], [Adam()], [RAdam()], [QHAdam()],
#' [Larc()], [Lamb()], [Lookahead()], [ranger()], [OptimWrapper()] and the
#' [steppers]), called through reticulate. Optimizers are Python objects:
#' use their methods with `$` (`opt$step()`, `opt$zero_grad()`,
#' `opt$freeze_to(1)`, `opt$hypers`).
#'
#' @section Python:
#' Loading the package does not start Python. The first call that needs it
#' uses the Python reticulate picks: `RETICULATE_PYTHON` when set, else a
#' virtualenv named `r-pyfastopt` ([install_pyfastopt()] creates one), else
#' reticulate's usual search. If that Python lacks torch or pyfastopt the call
#' stops with an error that says how to fix it. [pyfastopt_available()] tells
#' without an error.
#'
#' @section Conventions:
#' * Indexing an [L] is 0-based, as in Python: `params[0:1]` is the first two
#'   items, in every reticulate version; an index out of range says which are
#'   valid. `params[[i]]` is an error (use `params[i]`, or `as.list(params)[[i]]`
#'   for an R list); `length()`, `as.list()` and `for (p in as.list(params))` work.
#' * Tensors index 0-based too (`m[1, 2]`, see [tensor-index]); `as.matrix()`,
#'   `as.array()` and `as.numeric()` copy them into R.
#' * Python warnings are R warnings; `opt$hypers` prints as an R list.
#' * Save an optimizer with [save_optimizer()] (not `saveRDS()`).
#' * Tensors support `+ - * / ^`, comparisons and unary minus with numbers on
#'   either side, `sqrt()`, `exp()`, `sum()`, ... ([tensor-ops]); they print
#'   as Python prints them ([tensor-print]).
#' * Whole numbers typed as doubles (`6`) are accepted where Python wants an
#'   int; errors name the argument that is wrong.
#' * Steppers passed to an optimizer reach Python as Python functions: a step
#'   never calls back into R. R functions can be steppers too ([multi_tensor()]).
#' * R inside Python (rpy2): see [with_python_gil()].
#'
#' @keywords internal
"_PACKAGE"
