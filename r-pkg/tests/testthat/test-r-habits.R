test_that("save_optimizer/load_optimizer resume bit for bit in a new R session", {
  skip_if_no_pyfastopt()
  dir <- tempfile("resume")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE))
  common <- c(
    "library(pyfastopt)",
    "torch <- reticulate::import('torch')",
    "torch$manual_seed(0L)",
    "params <- lapply(1:3, function(i) torch$randn(5L, 3L)$requires_grad_())",
    "grads <- lapply(1:6, function(s) lapply(1:3, function(i) torch$randn(5L, 3L)))",
    "go <- function(opt, steps) for (s in steps) { for (i in 1:3) params[[i]]$grad <- grads[[s]][[i]]; opt$step() }",
    "opt <- Adam(list(params[1:2], params[3]), lr = 0.01, wd = 0.1)",
    sprintf("dir <- '%s'", dir))
  res <- run_rscript(c(common,
    "go(opt, 1:6)",
    "torch$save(params, file.path(dir, 'straight.pt'))",
    "torch$manual_seed(0L)"), env = "")
  expect_equal(res$status, 0L, info = res$output)
  # first session: 3 steps, save; second session: rebuild, load, 3 more steps
  res <- run_rscript(c(common, "go(opt, 1:3)",
    "save_optimizer(opt, file.path(dir, 'opt.pt'))",
    "torch$save(params, file.path(dir, 'params.pt'))",
    "saveRDS(opt, file.path(dir, 'opt.rds'))"))
  expect_equal(res$status, 0L, info = res$output)
  res <- run_rscript(c(common,
    "saved <- torch$load(file.path(dir, 'params.pt'))",
    "torch$no_grad()$`__enter__`()",
    "for (i in 1:3) params[[i]]$copy_(saved[[i]])",
    "torch$no_grad()$`__exit__`(NULL, NULL, NULL)",
    "load_optimizer(opt, file.path(dir, 'opt.pt'))",
    "go(opt, 4:6)",
    "straight <- torch$load(file.path(dir, 'straight.pt'))",
    "same <- all(vapply(1:3, function(i) torch$equal(params[[i]], straight[[i]]), TRUE))",
    "cat('BITWISE', same, '\\n')",
    "old <- readRDS(file.path(dir, 'opt.rds'))",
    "cat(tryCatch(old$step(), error = conditionMessage), '\\n')"))
  expect_equal(res$status, 0L, info = res$output)
  expect_match(res$output, "BITWISE TRUE")
  expect_match(res$output, "earlier R session.*save_optimizer\\(opt, path\\).*load_optimizer\\(opt, path\\)")
})

test_that("opt$state_dict() survives R: it stays a Python dict that load_state_dict() takes", {
  skip_if_no_pyfastopt()
  p <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
  opt <- Adam(list(p), lr = 0.1)
  opt$step()
  sd <- opt$state_dict()
  expect_s3_class(sd, "python.builtin.dict")
  opt2 <- Adam(list(tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))), lr = 0.5)
  opt2$load_state_dict(sd)
  expect_equal(opt2$hypers$items[[1]]$lr, 0.1)
  expect_equal(pyrepr(opt2$state_dict()), pyrepr(sd))
  # the R list reticulate makes of it is refused with a pointer to what works
  expect_error(opt2$load_state_dict(reticulate::py_to_r(sd)), "save_optimizer")
})

test_that("Python warnings become R warnings (catchable)", {
  skip_if_no_pyfastopt()
  groups <- lapply(0:2, function(i) lapply(0:1, function(x) tst_param(x)))
  opt <- SGD(groups, lr = 0.1)
  expect_warning(opt$freeze_to(3), "UserWarning: Freezing 3 groups; model has 3; whole model is frozen")
  w <- tryCatch(opt$freeze_to(5), warning = function(w) conditionMessage(w))
  expect_match(w, "whole model is frozen")
})

test_that("opt$hypers prints as an R list; L has length(), as.list() and for over as.list()", {
  skip_if_no_pyfastopt()
  params <- params4()
  opt <- SGD(list(params[0:1], params[2:3]), lr = c(0.01, 0.1))
  printed <- out(print(opt$hypers))
  expect_equal(printed[1], "<hypers of 2 parameter groups: opt$hypers$items[[i]] is group i>")
  expect_true(all(c("[[2]]$lr", "[1] 0.1", "[[1]]$lr", "[1] 0.01") %in% printed))
  expect_equal(length(params), 4L)
  items <- as.list(params)
  expect_type(items, "list")
  expect_equal(out(items[[1]]), "tensor(0.)")
  seen <- c()
  for (p in as.list(params)) seen <- c(seen, as.numeric(p))
  expect_equal(seen, c(0, 1, 2, 3))
})

test_that("tensors: as.matrix() and 0-based 2-d indexing", {
  skip_if_no_pyfastopt()
  m <- tensor(matrix(c(1, 2, 3, 4, 5, 6), 2))
  expect_equal(as.matrix(m), matrix(c(1, 2, 3, 4, 5, 6), 2))
  expect_equal(as.numeric(m[1, 2]), 6)
  expect_equal(as.numeric(m[0, 0]), 1)
  expect_equal(as.numeric(m[, 0]), c(1, 2))
  expect_equal(as.numeric(m[1]), c(2, 4, 6))
  expect_equal(as.numeric(m[-1, -1]), 6)
  expect_equal(as.matrix(tensor(c(1, 2))), matrix(c(1, 2), ncol = 1))
  expect_error(as.matrix(tensor(array(1:8, c(2, 2, 2)))), "3 dimensions; use as.array")
  expect_error(m[2, 0], "index 2 is out of range for dimension 1 of size 2 \\(tensor indexing is 0-based, valid: 0..1")
})

test_that("an R stepper marked multi_tensor runs once per bucket and gives SGD-momentum's numbers", {
  skip_if_no_pyfastopt()
  calls <- new.env()
  calls$n <- 0L
  my_average <- multi_tensor(function(p, mom, grad_avg = NULL, ...) {
    calls$n <- calls$n + 1L
    if (is.null(grad_avg)) grad_avg <- p$grad$clone()$zero_()
    grad_avg$mul_(mom)$add_(p$grad)
    list(grad_avg = grad_avg)
  }, defaults = list(mom = 0.9))
  my_step <- multi_tensor(function(p, lr, grad_avg) {   # no `...`: gets only what it declares
    # the thin `$` for lists of tensors (one reticulate call per method), not reticulate's
    m <- getS3method("$", class(p)[1], optional = TRUE)     # none for one tensor (per param)
    calls$dollar <- is.function(m) && identical(body(m), body(pyfastopt:::.tensor_list_dollar))
    p$data$add_(grad_avg, alpha = -lr)
    NULL
  })
  params <- L(lapply(0:99, function(x) tst_param(x)))
  opt <- Optimizer(params, list(my_average, my_step), lr = 0.1)
  expect_equal(opt$hypers$items[[1]]$mom, 0.9)
  for (i in 1:3) opt$step()
  expect_equal(calls$n, 3L)     # 100 params, one bucket: one call per step
  expect_true(calls$dollar)
  ref <- L(lapply(0:99, function(x) tst_param(x)))
  opt_ref <- SGD(ref, lr = 0.1, mom = 0.9)
  for (i in 1:3) opt_ref$step()
  expect_equal(sapply(as.list(params), as.numeric), sapply(as.list(ref), as.numeric), tolerance = 1e-6)
  # x - 0.1 * (0.1x)(1 + 1.9 + 2.71), independently
  expect_equal(sapply(as.list(params), as.numeric), (0:99) * (1 - 0.01 * 5.61), tolerance = 1e-5)
  # unmarked: once per param
  calls$n <- 0L
  plain <- function(p, mom, grad_avg = NULL, ...) my_average(p, mom, grad_avg)
  Optimizer(L(lapply(0:3, function(x) tst_param(x))), list(plain, my_step), lr = 0.1, mom = 0.9)$step()
  expect_equal(calls$n, 4L)
})

test_that("errors from an R stepper name the stepper", {
  skip_if_no_pyfastopt()
  broken_step <- function(p, lr, ...) stop("boom")
  opt <- Optimizer(params4(), broken_step, lr = 0.1)
  expect_error(opt$step(), "R stepper 'broken_step' failed: boom")
  opt <- Optimizer(params4(), list(sgd_step, function(p, lr, ...) stop("bad")), lr = 0.1)
  expect_error(opt$step(), "R stepper 'R stepper 2' failed: bad")
  needs_x <- function(p, lr, x) x
  expect_error(Optimizer(params4(), needs_x, lr = 0.1)$step(), "R stepper 'needs_x' failed: .*x")
})

test_that("R factories restate no defaults: Python's are used, and the help page shows them", {
  skip_if_no_pyfastopt()
  bridge <- reticulate::import("pyfastopt.r_bridge")
  for (name in pyfastopt:::.factory_names) {
    f <- get(name, envir = asNamespace("pyfastopt"))
    expect_equal(names(formals(f)), c("params", "..."), info = name)
    sig <- bridge$factory_defaults(py()[[name]])
    py_defaults <- Filter(function(s) s$has_default && s$name != "k", sig)
    opt <- f(tst_param(1), lr = 0.1)
    h <- opt$hypers$items[[1]]
    for (s in py_defaults) {
      if (s$name %in% c("lr", "decouple_wd", "alpha", "clip")) next     # lr is given; the rest are not hypers of the chain
      expect_equal(h[[s$name]], s$default, info = paste(name, s$name))
    }
  }
  sig <- reticulate::import("inspect")$signature(py()$Adam)
  expect_equal(Adam(tst_param(1), lr = 0.1)$hypers$items[[1]]$eps,
               reticulate::py_get_item(sig$parameters, "eps")$default)
  # the installed help page lists exactly Python's current defaults
  rd <- tools::Rd_db("pyfastopt")[["optimizers.Rd"]]
  text <- paste(capture.output(tools::Rd2txt(rd, options = list(underline_titles = FALSE))), collapse = "\n")
  for (line in strsplit(pyfastopt:::.factory_defaults_text(), "\n")[[1]]) {
    call <- sub("^\\* `(.*)`$", "\\1", line)
    expect_true(grepl(call, gsub("\\s+", " ", text), fixed = TRUE), info = call)
  }
})

test_that("opt$state prints param by param, with R-printed values; indexing it is unchanged", {
  skip_if_no_pyfastopt()
  params <- list(tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3)), tst_param(c(1, 2, 3), c(0.01, 0.02, 0.03)))
  opt <- Larc(params, lr = 0.1)
  expect_equal(out(print(opt$state)),
               "<state of 0 params (0-based positions); opt$state[param] is one param's>")
  opt$step()
  printed <- out(print(opt$state))
  expect_equal(printed[1], "<state of 2 params (0-based positions); opt$state[param] is one param's>")
  # the R page's values: param 0's local lr 0.02 (a tensor), param 1's clipped to lr (a number)
  at <- match(c("[group 0, param 0]", "[group 0, param 1]"), printed)
  expect_false(anyNA(at))
  expect_equal(printed[at[1] + 1:2], c("$grad_avg", "tensor([0.1000, 0.2000, 0.3000])"))
  expect_equal(printed[at[2] + 4:5], c("$local_lr", "[1] 0.1"))
  expect_equal(out(opt$state[params[[1]]]["local_lr"]), c("$local_lr", "tensor(0.0200)", ""))
})
