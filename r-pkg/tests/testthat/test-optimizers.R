# Values: fastai's notebook tests, as listed in the reference spec (section 6).

test_that("Optimizer steps with a stepper and with a list of steppers", {
  skip_if_no_pyfastopt()
  params <- params4()
  opt <- Optimizer(params, sgd_step, lr = 0.1)
  opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.99, 1.98, 2.97), tolerance = 1e-6)
  params <- params4()
  opt <- Optimizer(params, list(weight_decay, sgd_step), lr = 0.1, wd = 0.1)
  opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.98, 1.96, 2.94), tolerance = 1e-6)
})

test_that("steppers reach Python as the Python functions, with their defaults", {
  skip_if_no_pyfastopt()
  params <- params4()
  opt <- Optimizer(params, list(weight_decay, sgd_step), lr = 0.1)
  # weight_decay$defaults (wd = 0) filled in wd, first, as in fastai
  expect_equal(pyrepr(opt$hypers), "[{'wd': 0.0, 'lr': 0.1}]")
  cbs <- reticulate::py_get_attr(opt, "cbs")
  expect_equal(reticulate::py_id(reticulate::py_get_item(cbs, 0L)),
               reticulate::py_id(py()$weight_decay))
  expect_equal(reticulate::py_id(reticulate::py_get_item(cbs, 1L)),
               reticulate::py_id(py()$sgd_step))
  expect_equal(reticulate::py_id(reticulate::r_to_py(sgd_step)), reticulate::py_id(py()$sgd_step))
  # inside a list, too
  l <- reticulate::r_to_py(list(l2_reg, average_grad))
  expect_equal(reticulate::py_id(reticulate::py_get_item(l, 1L)), reticulate::py_id(py()$average_grad))
  # a Python function passes through as well
  opt <- Optimizer(params4(), py()$sgd_step, lr = 0.1)
  expect_equal(pyrepr(opt$hypers), "[{'lr': 0.1}]")
})

test_that("an R function works as a stepper (slow path)", {
  skip_if_no_pyfastopt()
  params <- params4()
  my_step <- function(p, lr, ...) { p$data$sub_(p$grad$data * lr); NULL }
  opt <- Optimizer(params, my_step, lr = 0.1)
  opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.99, 1.98, 2.97), tolerance = 1e-6)
})

test_that("grads set to NULL are skipped; param groups and hypers edits take effect", {
  skip_if_no_pyfastopt()
  params <- params4()
  opt <- Optimizer(params, sgd_step, lr = 0.1)
  params[3]$grad <- NULL
  opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.99, 1.98, 3), tolerance = 1e-6)
  params <- params4()
  opt <- Optimizer(list(params[0:1], params[2:3]), sgd_step, lr = 0.1)
  opt$hypers$items[[1]][[1]] <- 0.01
  opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.999, 1.98, 2.97), tolerance = 1e-6)
  opt <- Optimizer(list(params[0:1], params[2:3]), sgd_step, lr = c(0.01, 0.1))
  expect_equal(pyrepr(opt$hypers), "[{'lr': 0.01}, {'lr': 0.1}]")
  opt$set_hyper("lr", 0.5)
  expect_equal(pyrepr(opt$hypers), "[{'lr': 0.5}, {'lr': 0.5}]")
  # list of R lists = parameter groups
  opt <- Optimizer(list(list(params[0], params[1]), list(params[2])), sgd_step, lr = 0.1)
  expect_equal(length(opt$param_lists), 2L)
})

test_that("zero_grad, freeze_to with 1 or 1L, state_dict", {
  skip_if_no_pyfastopt()
  params <- params4()
  opt <- Optimizer(params, list(weight_decay, sgd_step), lr = 0.1, wd = 0.1)
  opt$zero_grad()
  expect_equal(sapply(params$items, function(p) vals(p$grad)), c(0, 0, 0, 0))
  groups <- lapply(0:2, function(i) lapply(0:3, function(x) tst_param(x)))
  opt <- Optimizer(groups, sgd_step, lr = 0.1)
  rg <- function() sapply(groups, function(g) sapply(g, function(p) p$requires_grad))
  opt$freeze_to(1)
  expect_equal(unname(rg()[1, ]), c(FALSE, TRUE, TRUE))
  opt$unfreeze()
  opt$freeze_to(1L)
  expect_equal(unname(rg()[1, ]), c(FALSE, TRUE, TRUE))
  expect_equal(opt$frozen_idx, 1L)
  opt$freeze()
  expect_equal(opt$frozen_idx, 2L)
  expect_error(opt$freeze_to(1.5), "`n` must be a whole number, got 1.5")
  sd <- opt$state_dict()
  expect_equal(length(sd$state), 12L)
})

test_that("SGD with and without momentum, weight decay and L2", {
  skip_if_no_pyfastopt()
  params <- params4()
  opt <- SGD(params, lr = 0.1)
  opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.99, 1.98, 2.97), tolerance = 1e-6)
  opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.98, 1.96, 2.94), tolerance = 1e-6)
  params <- params4()
  opt <- SGD(params, lr = 0.1, mom = 0.9)
  opt$step(); opt$step()
  expect_equal(sapply(params$items, vals), c(0, 0.971, 1.942, 2.913), tolerance = 1e-6)
  expect_equal(pyrepr(SGD(params4(), lr = 0.1)$hypers), "[{'wd': 0.0, 'lr': 0.1, 'mom': 0.0}]")
  params <- params4()
  SGD(params, lr = 0.1, mom = 0.9, wd = 0.1)$step()
  expect_equal(sapply(params$items, vals), c(0, 0.98, 1.96, 2.94), tolerance = 1e-6)
  params <- params4()
  SGD(params, lr = 0.1, mom = 0.9, wd = 0.1, decouple_wd = FALSE)$step()
  expect_equal(sapply(params$items, vals), c(0, 0.98, 1.96, 2.94), tolerance = 1e-6)
  expect_equal(sapply(params$items, function(p) vals(p$grad)), c(0, 0.2, 0.4, 0.6), tolerance = 1e-6)
})

test_that("RMSProp", {
  skip_if_no_pyfastopt()
  p <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- RMSProp(p, lr = 0.1)
  opt$step(); opt$step()
  expect_equal(vals(p), c(-0.70887977, 0.29111934, 1.29111922), tolerance = 1e-6)
  p <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- RMSProp(p, lr = 0.1, mom = 0.9)
  opt$step(); opt$step()
  expect_equal(vals(p), c(-1.34687221, -0.3468734, 0.65312624), tolerance = 1e-6)
})

test_that("Adam, RAdam, QHAdam, Lamb", {
  skip_if_no_pyfastopt()
  p <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- Adam(p, lr = 0.1, wd = 0)
  opt$step()
  expect_equal(vals(p), c(0.90000999, 1.90000498, 2.90000343), tolerance = 1e-6)
  expect_equal(opt$state[p]$step, 1L)
  opt$step()
  expect_equal(vals(p), c(0.80001998, 1.80000997, 2.80000687), tolerance = 1e-6)
  expect_equal(pyrepr(Adam(tst_param(1), lr = 0.1)$hypers),
               "[{'wd': 0.01, 'sqr_mom': 0.99, 'lr': 0.1, 'mom': 0.9, 'eps': 1e-05}]")

  p <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- RAdam(p, lr = 0.1)
  for (i in 1:5) opt$step()
  expect_equal(vals(p), c(0.95, 1.9, 2.85), tolerance = 1e-6)
  opt$step()
  expect_equal(vals(p), c(0.94183296, 1.89183259, 2.84183240), tolerance = 1e-6)
  p <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- RAdam(p, lr = 0.1, beta = 1)
  for (i in 1:6) opt$step()
  expect_equal(vals(p), c(0.94890279, 1.89795339, 2.84713197), tolerance = 1e-6)

  p <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- QHAdam(p, lr = 0.1)
  opt$step()
  expect_equal(vals(p), c(0.9, 1.9, 2.9), tolerance = 1e-6)
  opt$step()
  expect_equal(vals(p), c(0.8, 1.8, 2.8), tolerance = 1e-6)

  p <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- Lamb(p, lr = 0.1)
  opt$step()
  expect_equal(vals(p), c(0.78398371, 1.78397286, 2.7839694), tolerance = 1e-6)
  opt$step()
  expect_equal(vals(p), c(0.58779693, 1.58777618, 2.58776951), tolerance = 1e-6)
})

test_that("Lion: sign of the interpolated momentum, decoupled decay, Python's defaults", {
  skip_if_no_pyfastopt()
  params <- params4()                   # values 0..3, grads a tenth of them
  opt <- Lion(params, lr = 0.1)
  # the defaults come from Python: mom 0.9, sqr_mom 0.99, wd 0.1
  expect_equal(pyrepr(opt$hypers), "[{'wd': 0.1, 'lr': 0.1, 'mom': 0.9, 'sqr_mom': 0.99}]")
  opt$step()
  # p * (1 - lr * wd) - lr * sign(0.1 * g); a zero grad has sign 0
  expect_equal(sapply(params$items, vals), c(0, 0.89, 1.88, 2.87), tolerance = 1e-6)
  # grad_avg = (1 - sqr_mom) * g
  st <- opt$state_dict()
  expect_equal(vals(reticulate::py_get_item(reticulate::py_get_item(st, "state"), 3L)$grad_avg),
               0.003, tolerance = 1e-6)
})

test_that("Larc local_lr: a tensor when not clipped, lr (a number) when clipped", {
  skip_if_no_pyfastopt()
  params <- list(tst_param(c(1:3), c(0.1, 0.2, 0.3)), tst_param(c(1:3), c(0.01, 0.02, 0.03)))
  opt <- Larc(params, lr = 0.1)
  opt$step()
  expect_equal(out(opt$state[params[[1]]]["local_lr"]), c("$local_lr", "tensor(0.0200)", ""))
  expect_equal(out(opt$state[params[[2]]]["local_lr"]), c("$local_lr", "[1] 0.1", ""))
  expect_equal(vals(params[[1]]), c(0.998, 1.996, 2.994), tolerance = 1e-6)
  expect_equal(vals(params[[2]]), c(0.999, 1.998, 2.997), tolerance = 1e-6)
  params <- list(tst_param(c(1:3), c(0.1, 0.2, 0.3)), tst_param(c(1:3), c(0.01, 0.02, 0.03)))
  opt <- Larc(params, lr = 0.1, clip = FALSE)
  opt$step()
  expect_equal(out(opt$state[params[[2]]]["local_lr"]), c("$local_lr", "tensor(0.2000)", ""))
  expect_equal(vals(params[[2]]), c(0.998, 1.996, 2.994), tolerance = 1e-6)
})

test_that("Lookahead (k as 6 or 6L) and ranger", {
  skip_if_no_pyfastopt()
  params <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  p <- params$data$clone()
  g <- tensor(c(0.1, 0.2, 0.3))
  opt <- Lookahead(SGD(params, lr = 0.1))
  for (i in 1:5) opt$step()
  expect_equal(vals(params), vals(p - g * 0.5), tolerance = 1e-6)
  opt$step()
  expect_equal(vals(params), vals(p * 0.5 + (p - g * 0.6) * 0.5), tolerance = 1e-6)
  params <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- Lookahead(SGD(params, lr = 0.1), k = 2, alpha = 0.5)
  expect_equal(opt$k, 2L)
  opt <- Lookahead(SGD(params, lr = 0.1), k = 2L)
  expect_equal(opt$k, 2L)
  expect_equal(pyrepr(opt$hypers), "[{'wd': 0.0, 'lr': 0.1, 'mom': 0.0}]")

  params <- tst_param(c(1:3), c(0.1, 0.2, 0.3))
  opt <- ranger(params, lr = 0.1)
  for (i in 1:6) opt$step()
  expect_equal(vals(params), c(0.9679985, 1.940081, 2.9121633), tolerance = 1e-6)
  expect_equal(ranger(tst_param(1), lr = 0.1, k = 3)$k, 3L)
})

test_that("OptimWrapper wraps a torch optimizer with fastai's hyper names", {
  skip_if_no_pyfastopt()
  p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
  opt <- OptimWrapper(list(p), torch()$optim$SGD, lr = 0.1, momentum = 0.9, weight_decay = 0.01)
  h <- opt$hypers[[1]]
  expect_equal(h$lr, 0.1)
  expect_equal(h$mom, 0.9)
  expect_equal(h$wd, 0.01)
  opt$set_hyper("mom", 0.95)
  expect_equal(opt$opt$param_groups[[1]]$momentum, 0.95)
  opt$step()
  # torch SGD: L2 weight decay, then momentum (first step: the gradient)
  expect_equal(vals(p), c(1 - 0.1 * 0.11, 2 - 0.1 * 0.22, 3 - 0.1 * 0.33), tolerance = 1e-6)
  built <- torch()$optim$SGD(list(tst_param(1)), lr = 0.01)
  expect_equal(OptimWrapper(opt = built)$hypers[[1]]$lr, 0.01)
  expect_error(OptimWrapper(list(p)), "OptimWrapper\\(\\): ")
  # convert_groups: no default restated in R; Python's (convert) applies, FALSE is passed on
  expect_identical(formals(OptimWrapper)$convert_groups, quote(expr = ))
  groups <- list(list(tst_param(1)), list(tst_param(2), tst_param(3)))
  expect_equal(length(OptimWrapper(groups, torch()$optim$SGD, lr = 0.1)$opt$param_groups), 2L)
  expect_error(OptimWrapper(groups, torch()$optim$SGD, lr = 0.1, convert_groups = FALSE),
               "OptimWrapper\\(\\): ")
})

test_that("factories called without arguments return the Python factory", {
  skip_if_no_pyfastopt()
  for (f in list(SGD, RMSProp, Adam, RAdam, QHAdam, Larc, Lamb, ranger, Lookahead, Optimizer)) {
    expect_true(inherits(f(), "python.builtin.object"))
  }
})

test_that("opt$step and opt$zero_grad are cached per object and behave like reticulate's", {
  skip_if_no_pyfastopt()
  params <- params4()
  opt <- SGD(params, lr = 0.1)
  s1 <- opt$step
  expect_identical(opt$step, s1)
  expect_null(opt$step())
  expect_invisible(opt$step())
  expect_equal(sapply(params$items, vals), c(0, 0.98, 1.96, 2.94), tolerance = 1e-6)
  opt2 <- opt   # the same Python object, the same R reference
  opt2$zero_grad()
  expect_equal(sapply(params$items, function(p) vals(p$grad)), c(0, 0, 0, 0))
  # arguments still go through reticulate
  expect_equal(opt$step(function() 3), 3)
  # other attributes are untouched
  expect_equal(opt$frozen_idx, 0L)
  la <- Lookahead(SGD(tst_param(1), lr = 0.1))
  la$step()
  expect_equal(la$count, 1L)
})
