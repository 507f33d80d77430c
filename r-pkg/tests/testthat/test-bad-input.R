# R's own kinds of bad input (NA, NULL, factors, huge strings, wrong types) give R errors that
# name the argument, raised before anything changes: hypers, params and state stay as they were.

snapshot <- function(opt, params) {
  list(hypers = reticulate::py_repr(opt$hypers),
       params = lapply(as.list(params), function(p) as.numeric(p)),
       grads = lapply(as.list(params), function(p) as.numeric(p$grad)),
       requires_grad = vapply(as.list(params), function(p) p$requires_grad, TRUE),
       state = reticulate::py_repr(reticulate::py_call(reticulate::py_get_attr(opt, "state_dict"))))
}

huge <- strrep("x", 2^20)

test_that("bad input to optimizer methods errors before anything changes", {
  skip_if_no_pyfastopt()
  params <- L(lapply(0:3, function(x) tst_param(x)))
  opt <- Adam(list(params[0:1], params[2:3]), lr = 0.1)
  opt$step()
  before <- snapshot(opt, params)
  cases <- list(
    list(quote(opt$set_hyper(NA, 0.1)), "`k` must be a hyper-parameter name \\(a single string\\), got NA"),
    list(quote(opt$set_hyper(NA_character_, 0.1)), "`k` must be a hyper-parameter name"),
    list(quote(opt$set_hyper(NULL, 0.1)), "`k` must be a hyper-parameter name .*got NULL"),
    list(quote(opt$set_hyper(factor("lr"), 0.1)), "`k` must be a hyper-parameter name \\(a string, not a factor\\), got a factor"),
    list(quote(opt$set_hyper(c("lr", "mom"), 0.1)), "`k` must be .*got a character of length 2"),
    list(quote(opt$set_hyper(1, 0.1)), "`k` must be a hyper-parameter name"),
    list(quote(opt$set_hyper("", 0.1)), "`k` must be a hyper-parameter name"),
    list(quote(opt$set_hyper(huge, 0.1)), "`k` must be a hyper-parameter name of at most 100 characters, got a string of 1048576 characters"),
    list(quote(opt$set_hyper()), "`k` must be"),
    list(quote(opt$set_hyper("lr")), "`v` must be a number"),
    list(quote(opt$set_hyper("lr", NA)), "`v` must be a number"),
    list(quote(opt$set_hyper("lr", NA_real_)), "`v` must be a number .*got NA_real_"),
    list(quote(opt$set_hyper("lr", NA_integer_)), "`v` must be a number .*got NA_integer_"),
    list(quote(opt$set_hyper("lr", NULL)), "`v` must be a number .*got NULL"),
    list(quote(opt$set_hyper("lr", factor(0.1))), "`v` must be a number or TRUE/FALSE \\(not a factor\\)"),
    list(quote(opt$set_hyper("lr", "0.1")), "`v` must be a number"),
    list(quote(opt$set_hyper("lr", huge)), "`v` must be a number .*got a string of 1048576 characters"),
    list(quote(opt$set_hyper("lr", c(0.1, NA))), "`v` must be a number"),
    list(quote(opt$set_hyper("lr", list(0.1))), "`v` must be a number"),
    list(quote(opt$set_hyper("lr", numeric())), "`v` must be a number"),
    list(quote(opt$set_hyper("lr", -1)), "lr must be"),
    list(quote(opt$set_hyper("lr", c(0.1, -1))), "lr must be"),
    list(quote(opt$set_hyper("mom", 2)), "mom must be"),
    list(quote(opt$set_hyper("lr", Inf)), "lr must be"),
    list(quote(opt$set_hypers(lr = NA)), "`lr` must be a number"),
    list(quote(opt$set_hypers(lr = NULL)), "`lr` must be a number .*got NULL"),
    list(quote(opt$set_hypers(lr = factor(1))), "`lr` must be a number or TRUE/FALSE \\(not a factor\\)"),
    list(quote(opt$set_hypers(lr = huge)), "`lr` must be a number .*1048576 characters"),
    list(quote(opt$set_hypers(0.1)), "must be named"),
    list(quote(opt$set_hypers(lr = 0.1, 0.2)), "must be named"),
    list(quote(opt$set_hypers(lr = 0.01, mom = 5)), "mom must be"),
    list(quote(opt$freeze_to(NA_integer_)), "`n` must be a whole number, got NA_integer_"),
    list(quote(opt$freeze_to(NA)), "`n` must be a whole number, got NA"),
    list(quote(opt$freeze_to(NA_real_)), "`n` must be a whole number"),
    list(quote(opt$freeze_to(NULL)), "`n` must be a whole number, got NULL"),
    list(quote(opt$freeze_to(factor(1))), "`n` must be a whole number, got a factor"),
    list(quote(opt$freeze_to("1")), "`n` must be a whole number"),
    list(quote(opt$freeze_to(huge)), "`n` must be a whole number, got a string of 1048576 characters"),
    list(quote(opt$freeze_to(1.5)), "`n` must be a whole number, got 1.5"),
    list(quote(opt$freeze_to(c(1, 2))), "`n` must be a whole number"),
    list(quote(opt$freeze_to(Inf)), "`n` must be a whole number"),
    list(quote(opt$freeze_to(3e9)), "`n` must be a whole number"),
    list(quote(opt$freeze_to()), "`n` must be a whole number, got NULL"),
    list(quote(opt$freeze_to(list(1))), "`n` must be a whole number"),
    list(quote(opt$freeze_to(TRUE)), "`n` must be a whole number, got TRUE"),
    list(quote(opt$set_hypers(mom = NA_real_)), "`mom` must be a number"),
    list(quote(opt$zero_grad(NA)), "`set_to_none` must be TRUE or FALSE, got NA"),
    list(quote(opt$zero_grad(factor(TRUE))), "`set_to_none` must be TRUE or FALSE"),
    list(quote(opt$zero_grad("yes")), "`set_to_none` must be TRUE or FALSE"),
    list(quote(opt$step(NA)), "`closure` must be a function or NULL, got NA"),
    list(quote(opt$step("f")), "`closure` must be a function or NULL"),
    list(quote(opt$freeze(1)), "opt\\$freeze\\(\\) takes no arguments"),
    list(quote(opt$unfreeze(NA)), "opt\\$unfreeze\\(\\) takes no arguments"),
    list(quote(opt$clear_state(TRUE)), "opt\\$clear_state\\(\\) takes no arguments"),
    list(quote(opt$load_state_dict(NULL)), "`state_dict` must be the Python dict opt\\$state_dict\\(\\) returns"),
    list(quote(opt$load_state_dict(list(state = list()))), "`state_dict` must be the Python dict .*save_optimizer"),
    list(quote(opt$load_state_dict(NA)), "`state_dict` must be the Python dict"),
    list(quote(opt$load_state_dict(huge)), "`state_dict` must be .*1048576 characters")
  )
  for (case in cases) {
    expect_error(eval(case[[1]]), case[[2]], info = deparse(case[[1]])[1])
    expect_identical(snapshot(opt, params), before, info = deparse(case[[1]])[1])
  }
  expect_gte(length(cases), 55)
})

test_that("bad input to factories, L, tensors, steppers and save/load names the argument", {
  skip_if_no_pyfastopt()
  params <- L(lapply(0:3, function(x) tst_param(x)))
  values <- function() lapply(as.list(params), as.numeric)
  before <- values()
  opt <- SGD(params, lr = 0.1)
  hyp <- reticulate::py_repr(opt$hypers)
  m <- tensor(matrix(1:6, 2))
  f <- tempfile(fileext = ".pt")
  cases <- list(
    list(quote(SGD(params, lr = NA)), "`lr` must be a number"),
    list(quote(SGD(params, lr = NULL)), "`lr` must be a number .*got NULL"),
    list(quote(SGD(params, lr = factor(0.1))), "`lr` must be a number or TRUE/FALSE \\(not a factor\\)"),
    list(quote(SGD(params, lr = huge)), "`lr` must be a number .*1048576 characters"),
    list(quote(SGD(params, lr = 0.1, decouple_wd = NA)), "`decouple_wd` must be TRUE or FALSE, got NA"),
    list(quote(Adam(params, lr = 0.1, eps = NA_real_)), "`eps` must be a number"),
    list(quote(ranger(params, lr = 0.1, k = NA_integer_)), "`k` must be a whole number, got NA_integer_"),
    list(quote(Lookahead(opt, k = NA)), "`k` must be a whole number"),
    list(quote(Lookahead(opt, 6)), "give `k` and `alpha` by name"),
    list(quote(Larc(params, lr = 0.1, clip = factor(TRUE))), "`clip` must be TRUE or FALSE"),
    list(quote(SGD(params, 0.1, lr = 0.2)), "`lr` is given twice"),
    list(quote(SGD(params, lr = 0.1, foo = 1)), "SGD\\(\\): TypeError: .*foo"),
    list(quote(params[NA]), "`i` must be an index without NA"),
    list(quote(params[NA_integer_]), "`i` must be a whole number"),
    list(quote(params[factor(1)]), "`i` must be a whole number"),
    list(quote(params[huge]), "`i` must be a whole number .*1048576 characters"),
    list(quote(params[NULL]), "`i` must be a whole number .*got NULL"),
    list(quote(params[[1]]), "`\\[\\[` is not used on an L"),
    list(quote(m[NA, 0]), "`i` must be whole numbers \\(0-based, valid: 0..1\\)"),
    list(quote(m[0, 3]), "index 3 is out of range for dimension 2 of size 3 .*0-based, valid: 0..2"),
    list(quote(m[0, factor(1)]), "`j` must be whole numbers"),
    list(quote(m[0, 0, 0]), "the tensor has 2 dimensions, got 3 indices"),
    list(quote(save_optimizer(opt, NA_character_)), "`path` must be a file name"),
    list(quote(save_optimizer(opt, NULL)), "`path` must be a file name .*got NULL"),
    list(quote(save_optimizer(NULL, f)), "`opt` must be an optimizer"),
    list(quote(load_optimizer(opt, file.path(tempdir(), "no-such-file.pt"))), "`path` must be an existing file"),
    list(quote(load_optimizer(opt, factor("a"))), "`path` must be a file name .*factor"),
    list(quote(multi_tensor("f")), "`f` must be an R function"),
    list(quote(multi_tensor(function(p, ...) NULL, defaults = list(1))), "`defaults` must be a named list"),
    list(quote(Optimizer(params, function(...) NULL, lr = 0.1)), "its first argument must be the parameter"),
    list(quote(install_pyfastopt(envname = NA_character_, dry_run = TRUE)), "`envname` must be"),
    list(quote(install_pyfastopt(package = huge, dry_run = TRUE)), "`package` must be a folder with pyproject.toml"),
    list(quote(install_pyfastopt(torch = NA, dry_run = TRUE)), "`torch` must be NULL or a pip requirement")
  )
  for (case in cases) {
    expect_error(eval(case[[1]]), case[[2]], info = deparse(case[[1]])[1])
    expect_identical(values(), before, info = deparse(case[[1]])[1])
    expect_identical(reticulate::py_repr(opt$hypers), hyp, info = deparse(case[[1]])[1])
  }
  expect_false(file.exists(f))
})
