#' Save and restore an optimizer's state
#'
#' `save_optimizer(opt, path)` writes `opt$state_dict()` (hyper-parameters, per-parameter state
#' such as Adam's averages and step counts, frozen groups) to a file with `torch.save`;
#' `load_optimizer(opt, path)` reads it into `opt`, an optimizer built the same way (same
#' factory, same parameter groups and sizes), for example in a new R session. Training then
#' resumes exactly, bit for bit. The file holds only tensors and plain values and is read with
#' `torch.load(weights_only = TRUE)`. Save the parameters themselves (the model) separately.
#'
#' The state dict never passes through R: `opt$state_dict()` returns the Python dict, which
#' `opt$load_state_dict()` accepts as is. `saveRDS()` cannot keep an optimizer (it is a Python
#' object); an optimizer restored by `readRDS()` says so when used.
#'
#' @param opt An optimizer ([Optimizer()], [Adam()], ...).
#' @param path The file.
#' @return `save_optimizer()`: `path`, invisibly; `load_optimizer()`: `opt`, invisibly.
#' @export
#' @examplesIf pyfastopt_available()
#' p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#' opt <- Adam(p, lr = 0.1)
#' opt$step()
#' f <- tempfile(fileext = ".pt")
#' save_optimizer(opt, f)
#' opt2 <- Adam(tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3)), lr = 0.01)
#' load_optimizer(opt2, f)
#' opt2$hypers
save_optimizer <- function(opt, path) {
  .check_opt(opt)
  path <- .check_path(path)
  .call_py("save_optimizer()", .bridge()$save_state, list(opt, path))
  invisible(path)
}

#' @rdname save_optimizer
#' @export
load_optimizer <- function(opt, path) {
  .check_opt(opt)
  path <- .check_path(path)
  if (!file.exists(path)) .arg_error("path", "an existing file (written by save_optimizer())", path)
  .call_py("load_optimizer()", .bridge()$load_state, list(opt, path))
  invisible(opt)
}

.bridge <- function() {
  .pf()
  .pkg$bridge
}

.check_opt <- function(opt) {
  if (missing(opt) || !inherits(opt, "python.builtin.object"))
    .arg_error("opt", "an optimizer (e.g. Adam(params, lr = 0.01))", if (missing(opt)) NULL else opt)
  if (reticulate::py_is_null_xptr(opt)) .dead_optimizer()
  if (!reticulate::py_has_attr(opt, "state_dict")) .arg_error("opt", "an optimizer", opt)
}

.check_path <- function(path) {
  if (missing(path) || !(is.character(path) && length(path) == 1 && !is.na(path) && nzchar(path)))
    .arg_error("path", "a file name (a single string)", if (missing(path)) NULL else path)
  path.expand(path)
}
