#' Make a torch tensor
#'
#' fastai's `tensor()`: numbers, vectors, lists, matrices and arrays become a
#' torch tensor; doubles become `float32` (as in fastai, float64 turns into
#' float). A length-1 R vector gives a 0-d tensor, a longer one a 1-d tensor,
#' an R integer vector (`1:3`) an `int64` tensor. Matrices and arrays keep their
#' shape (row-major, as R prints them). Several arguments are stacked, as in
#' Python's `tensor(1, 2, 3)`.
#'
#' @param x Data: a number, a numeric or logical vector, a matrix or array, a
#'   list of numbers or of tensors, or a tensor (returned as is).
#' @param ... More values (stacked with `x`), or named arguments for Python
#'   such as `dtype = torch$float64`.
#' @return A Python `torch.Tensor`.
#' @export
#' @examplesIf pyfastopt_available()
#' tensor(1.)
#' tensor(c(1, 2, 3))
#' tensor(matrix(1:6, 2))
tensor <- function(x, ...) {
  if (missing(x) || is.null(x)) .arg_error("x", "numbers, a list, a matrix or a tensor", if (missing(x)) NULL else x)
  if (!(is.numeric(x) || is.logical(x) || is.list(x) || is.data.frame(x) ||
        inherits(x, "python.builtin.object"))) {
    .arg_error("x", "numbers, a list, a matrix or a tensor", x)
  }
  dots <- list(...)
  unnamed <- if (is.null(names(dots))) rep(TRUE, length(dots)) else names(dots) == ""
  dots[unnamed] <- lapply(dots[unnamed], .to_nested)
  .call_py("tensor()", .pyfn("pyfastopt", "tensor"), c(list(.to_nested(x)), dots))
}

#' Convert a tensor to float32
#'
#' `float(t)` is `t$float()`.
#'
#' @param tensor A torch tensor, or numbers (made into a tensor first).
#' @return A `float32` torch tensor.
#' @export
#' @examplesIf pyfastopt_available()
#' float(tensor(1:3))
float <- function(tensor) {
  if (!.is_tensor(tensor)) {
    if (is.numeric(tensor) || is.logical(tensor)) tensor <- pyfastopt::tensor(tensor)
    else .arg_error("tensor", "a torch tensor", tensor)
  }
  tensor$float()
}

#' A test parameter
#'
#' A `float32` tensor holding `val` (a number gives a 0-d tensor), whose `grad`
#' is `grad`, or `val / 10` when `grad` is `NULL`. Handy to try steppers and
#' optimizers on.
#'
#' @param val The value: a number, a vector, a matrix or a list.
#' @param grad The gradient, shaped like `val`; `NULL` for `val / 10`.
#' @return A torch tensor with `$grad` set.
#' @export
#' @examplesIf pyfastopt_available()
#' p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
#' p$grad
tst_param <- function(val, grad = NULL) {
  if (missing(val) || !(is.numeric(val) || is.list(val) || .is_tensor(val)))
    .arg_error("val", "numbers or a tensor", if (missing(val)) NULL else val)
  if (!is.null(grad) && !(is.numeric(grad) || is.list(grad) || .is_tensor(grad)))
    .arg_error("grad", "numbers, a tensor or NULL", grad)
  args <- list(.to_nested(val))
  if (!is.null(grad)) args$grad <- .to_nested(grad)
  .call_py("tst_param()", .pyfn("pyfastopt", "tst_param"), args)
}

# ---- arithmetic and comparison on tensors -------------------------------------

.op_names <- c(
  "+" = "add", "-" = "sub", "*" = "mul", "/" = "truediv", "^" = "pow",
  "%%" = "mod", "%/%" = "floordiv", "==" = "eq", "!=" = "ne", "<" = "lt",
  "<=" = "le", ">" = "gt", ">=" = "ge", "&" = "and_", "|" = "or_"
)

# R operand for a Python operator: tensors pass through, a number stays a
# Python scalar (so torch's scalar type promotion applies, exactly as in
# Python), a longer vector/matrix becomes a tensor.
.operand <- function(x) {
  if (inherits(x, "python.builtin.object")) return(x)
  if ((is.numeric(x) || is.logical(x)) && length(x) == 1 && is.null(dim(x))) return(x)
  if (is.numeric(x) || is.logical(x)) return(tensor(x))
  stop(sprintf("cannot combine a torch tensor with %s", .describe(x)), call. = FALSE)
}

#' Arithmetic, comparison and math on torch tensors
#'
#' `+ - * / ^ %% %/%`, comparisons and `& |` work on torch tensors with a
#' tensor or a number on either side (`p - g * 0.5`, `0.5 * p`), and unary
#' minus (`-p`). They call Python's own operators, so results, broadcasting
#' and dtypes are exactly what Python gives. `Math` functions (`sqrt`, `exp`,
#' `log`, `abs`, ...) and `sum`, `prod`, `max`, `min` call the torch functions.
#'
#' @param e1,e2 Tensors or numbers.
#' @param x A tensor.
#' @param ... Passed on by the group generics; unused.
#' @param na.rm Unused (tensors have no `NA`).
#' @return A torch tensor.
#' @name tensor-ops
#' @examplesIf pyfastopt_available()
#' p <- tensor(c(1, 2, 3))
#' p - p * 0.5
#' 0.5 * p
#' -p
#' sqrt(p)
#' p > 1.5
NULL

#' @rdname tensor-ops
#' @export
Ops.torch.Tensor <- function(e1, e2) {
  if (missing(e2)) {
    f <- switch(.Generic, "-" = "neg", "+" = "pos", "!" = "inv",
                stop(sprintf("unary %s is not defined for torch tensors", .Generic), call. = FALSE))
    if (f == "inv") return(.pyfn("torch", "logical_not")(e1))
    return(.pyfn("operator", f)(e1))
  }
  name <- .op_names[[.Generic]]
  .pyfn("operator", name)(.operand(e1), .operand(e2))
}

.math_names <- c(
  abs = "abs", sign = "sign", sqrt = "sqrt", floor = "floor", ceiling = "ceil",
  trunc = "trunc", round = "round", exp = "exp", log = "log", expm1 = "expm1",
  log1p = "log1p", cos = "cos", sin = "sin", tan = "tan", acos = "acos",
  asin = "asin", atan = "atan", cosh = "cosh", sinh = "sinh", tanh = "tanh",
  log2 = "log2", log10 = "log10", cumsum = "cumsum", cumprod = "cumprod"
)

#' @rdname tensor-ops
#' @export
Math.torch.Tensor <- function(x, ...) {
  f <- .math_names[.Generic]
  if (is.na(f)) stop(sprintf("%s() is not defined for torch tensors", .Generic), call. = FALSE)
  if (f %in% c("cumsum", "cumprod")) return(.pyfn("torch", f)(x$flatten(), dim = 0L))
  if (.Generic == "log" && length(list(...))) {
    base <- list(...)[[1]]
    return(.pyfn("torch", "log")(x) / log(base))
  }
  .pyfn("torch", f)(x)
}

#' @rdname tensor-ops
#' @export
Summary.torch.Tensor <- function(..., na.rm = FALSE) {
  args <- list(...)
  f <- switch(.Generic, sum = "sum", prod = "prod", max = "max", min = "min",
              any = "any", all = "all",
              stop(sprintf("%s() is not defined for torch tensors", .Generic), call. = FALSE))
  vals <- lapply(args, function(a) .pyfn("torch", f)(if (.is_tensor(a)) a else tensor(a)))
  if (length(vals) == 1) return(vals[[1]])
  .pyfn("torch", f)(.pyfn("torch", "stack")(lapply(vals, function(v) v$to(vals[[1]]$dtype))))
}

#' @rdname tensor-ops
#' @export
mean.torch.Tensor <- function(x, ...) x$mean()

# ---- printing and conversion --------------------------------------------------

#' Print and convert torch tensors
#'
#' `print()` shows Python's `repr()` (`tensor(0.9000)`), `str()` Python's
#' `str()` on one line, as in `str(list_of_tensors)`:
#' ` $ :tensor(0.)`. `as.numeric()`, `as.vector()` and `as.array()` copy the
#' values into R.
#'
#' @param x,object A torch tensor.
#' @param mode,... As for the base generics.
#' @return `print` and `str` return their argument invisibly; the conversions
#'   return R vectors or arrays.
#' @name tensor-print
#' @examplesIf pyfastopt_available()
#' t <- tensor(c(0.5, 1.5))
#' print(t)
#' str(list(t))
#' as.numeric(t)
NULL

#' @rdname tensor-print
#' @export
print.torch.Tensor <- function(x, ...) {
  writeLines(reticulate::py_repr(x))
  invisible(x)
}

#' @rdname tensor-print
#' @export
str.torch.Tensor <- function(object, ...) {
  cat(reticulate::py_str(object), "\n", sep = "")
  invisible(object)
}

.r_value <- function(v) if (inherits(v, "python.builtin.object")) reticulate::py_to_r(v) else v

.tensor_values <- function(x) {
  unlist(.r_value(x$detach()$cpu()$flatten()$tolist()), use.names = FALSE)
}

.tensor_shape <- function(x) {
  n <- as.integer(.r_value(x$dim()))
  vapply(seq_len(n) - 1L, function(i) as.integer(.r_value(x$size(i))), 1L)
}

#' @rdname tensor-print
#' @export
as.double.torch.Tensor <- function(x, ...) as.double(.tensor_values(x))

#' @rdname tensor-print
#' @export
as.vector.torch.Tensor <- function(x, mode = "any") as.vector(.tensor_values(x), mode = mode)

#' @rdname tensor-print
#' @export
as.array.torch.Tensor <- function(x, ...) {
  shape <- .tensor_shape(x)
  v <- .tensor_values(x)
  if (length(shape) <= 1) return(array(v, dim = length(v)))
  # torch is row-major, R column-major
  aperm(array(v, dim = rev(shape)), rev(seq_along(shape)))
}

#' @rdname tensor-print
#' @export
dim.torch.Tensor <- function(x) {
  shape <- .tensor_shape(x)
  if (length(shape) == 0) NULL else shape
}

#' @rdname tensor-print
#' @export
length.torch.Tensor <- function(x) {
  as.integer(.r_value(x$numel()))
}

#' @rdname tensor-print
#' @export
as.matrix.torch.Tensor <- function(x, ...) {
  shape <- .tensor_shape(x)
  if (length(shape) == 2) return(as.array(x))
  if (length(shape) <= 1) return(matrix(.tensor_values(x), ncol = 1))
  stop(sprintf("as.matrix(): the tensor has %d dimensions; use as.array() for an R array",
               length(shape)), call. = FALSE)
}

#' Index a torch tensor (0-based, as in Python)
#'
#' `t[i]`, `t[i, j]`, ... index a tensor as Python's `t[i, j]` does, **0-based**: `t[0]` is
#' the first element (or row), `m[1, 2]` the second row's third value, and a missing index
#' takes the whole dimension (`m[, 0]` is the first column). An index may be a whole number
#' (negative counts from the end) or a vector of them. The result is a tensor; an index out of
#' range is an error that says which are valid. For R's 1-based indexing, copy the values into
#' R first: `as.array(t)[i, j]`, `as.matrix(m)[i, j]`, `as.numeric(t)[i]`.
#'
#' @param x A torch tensor.
#' @param i,j,... Indices, one per dimension (0-based).
#' @param drop Unused (Python's indexing decides the result's shape).
#' @return A torch tensor.
#' @name tensor-index
#' @examplesIf pyfastopt_available()
#' m <- tensor(matrix(1:6, 2))
#' m
#' m[1, 2]
#' m[, 0]
#' as.matrix(m)[2, 3]
NULL

#' @rdname tensor-index
#' @export
`[.torch.Tensor` <- function(x, i, j, ..., drop = TRUE) {
  n_idx <- nargs() - 1L - !missing(drop)
  shape <- .tensor_shape(x)
  idx <- list()
  if (n_idx >= 1) idx[[1]] <- if (missing(i)) NULL else i
  if (n_idx >= 2) idx[[2]] <- if (missing(j)) NULL else j
  if (n_idx >= 3) idx <- c(idx, list(...))
  if (length(idx) > length(shape))
    stop(sprintf("the tensor has %d dimension%s, got %d indices", length(shape),
                 if (length(shape) == 1) "" else "s", length(idx)), call. = FALSE)
  py_idx <- lapply(seq_along(idx), function(d) .tensor_dim_index(idx[[d]], shape[d], d))
  key <- if (length(py_idx) == 1) py_idx[[1]] else reticulate::tuple(py_idx)
  tryCatch(reticulate::py_get_item(x, key), error = function(e) .py_error("tensor[i]", e))
}

.tensor_dim_index <- function(i, n, d) {
  if (is.null(i)) return(reticulate::py_eval("slice(None)", convert = FALSE))
  if (inherits(i, "python.builtin.object")) return(i)
  valid <- sprintf("0-based, valid: 0..%d", n - 1)
  if (is.factor(i) || !is.numeric(i) || length(i) == 0 || anyNA(i) || any(i != round(i)))
    .arg_error(if (d == 1) "i" else if (d == 2) "j" else paste0("index ", d),
               sprintf("whole numbers (%s)", valid), i)
  bad <- i[i >= n | i < -n]
  if (length(bad))
    stop(sprintf("index %s is out of range for dimension %d of size %d (tensor indexing is %s; for R's 1-based indexing use as.array(t)[...])",
                 format(bad[1]), d, n, valid), call. = FALSE)
  if (length(i) == 1) as.integer(i) else as.list(as.integer(i))
}
