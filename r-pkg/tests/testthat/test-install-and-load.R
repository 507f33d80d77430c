test_that("install_pyfastopt() plans an environment, and reuses one that works", {
  plan <- install_pyfastopt(envname = file.path(tempdir(), "no-such-env"), dry_run = TRUE)
  expect_true(plan$create)
  expect_true(plan$install)
  expect_true(any(grepl("^torch", plan$packages)))
  expect_true("pyfastopt" %in% plan$packages)
  expect_true("--extra-index-url" %in% plan$pip_options)
  expect_error(install_pyfastopt(envname = 1), "`envname` must be")
  expect_error(install_pyfastopt(force = NA), "`force` must be TRUE or FALSE")

  skip_if_no_pyfastopt()
  python <- reticulate::py_config()$python
  env <- dirname(dirname(python))
  skip_if_not(file.exists(file.path(env, "pyvenv.cfg")), "the Python in use is not a virtualenv")
  plan <- install_pyfastopt(envname = env, dry_run = TRUE)
  expect_false(plan$create)
  expect_false(plan$install)
  expect_message(res <- install_pyfastopt(envname = env), "nothing to do")
  expect_equal(normalizePath(res), normalizePath(python))
})

test_that("the package loads without Python, and the first call says how to fix it", {
  res <- run_rscript(c(
    "library(pyfastopt)",
    "cat('loaded\\n')",
    "cat('available:', pyfastopt_available(), '\\n')",
    "r <- tryCatch(tensor(1), error = function(e) conditionMessage(e))",
    "cat(r, '\\n')"
  ), env = "RETICULATE_PYTHON=/nonexistent/bin/python")
  expect_match(res$output, "loaded")
  expect_match(res$output, "available: FALSE")
  expect_match(res$output, "install_pyfastopt()", fixed = TRUE)
  expect_match(res$output, "RETICULATE_PYTHON")
  expect_equal(res$status, 0L)
})

test_that("RETICULATE_PYTHON is honoured, and a Python without the module is reported", {
  skip_if_no_pyfastopt()
  python <- reticulate::py_config()$python
  res <- run_rscript(c(
    "library(pyfastopt)",
    "print(tensor(1))",
    "cat('python:', reticulate::py_config()$python, '\\n')"
  ), env = paste0("RETICULATE_PYTHON=", python))
  expect_equal(res$status, 0L, info = res$output)
  expect_match(res$output, "tensor(1.)", fixed = TRUE)
  expect_match(res$output, paste("python:", python), fixed = TRUE)

  # a Python that lacks pyfastopt: the base interpreter of the venv in use
  cfg <- file.path(dirname(dirname(python)), "pyvenv.cfg")
  skip_if_not(file.exists(cfg), "the Python in use is not a virtualenv, no base Python to try")
  home <- sub("^home *= *", "", grep("^home *=", readLines(cfg), value = TRUE)[1])
  base <- file.path(home, "python3")
  skip_if_not(file.exists(base), "no base Python to try")
  has <- pyfastopt:::.python_has_modules(base, "pyfastopt")
  skip_if(has, "the base Python has pyfastopt too")
  res <- run_rscript(c(
    "library(pyfastopt)",
    "r <- tryCatch(SGD(list(), lr = 0.1), error = function(e) conditionMessage(e))",
    "cat(r, '\\n')"
  ), env = paste0("RETICULATE_PYTHON=", base))
  expect_match(res$output, "install_pyfastopt()", fixed = TRUE)
  expect_match(res$output, "pyfastopt", fixed = TRUE)
})
