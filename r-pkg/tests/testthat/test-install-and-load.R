test_that("install_pyfastopt() plans an environment, and reuses one that works", {
  plan <- install_pyfastopt(envname = file.path(tempdir(), "no-such-env"), dry_run = TRUE)
  expect_true(plan$create)
  expect_true(plan$install)
  # by default: the Python package bundled with the R package, torch as pip resolves it
  bundled <- normalizePath(system.file("python", package = "pyfastopt"))
  expect_equal(plan$packages, bundled)
  expect_true(file.exists(file.path(bundled, "pyproject.toml")))
  expect_true(file.exists(file.path(bundled, "pyfastopt", "__init__.py")))
  expect_false("--extra-index-url" %in% plan$pip_args)
  # the CPU index and a torch pin are options
  plan <- install_pyfastopt(envname = file.path(tempdir(), "no-such-env"), torch = "torch==2.13.0",
                            index_url = "https://download.pytorch.org/whl/cpu", dry_run = TRUE)
  expect_equal(plan$packages, c("torch==2.13.0", bundled))
  expect_true(all(c("--extra-index-url", "https://download.pytorch.org/whl/cpu") %in% plan$pip_args))
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

test_that("a failed install leaves no environment behind and says what failed", {
  env <- file.path(tempdir(), "failing-env")
  broken <- file.path(tempdir(), "broken-pkg")
  dir.create(broken, showWarnings = FALSE)
  writeLines("this is not toml [", file.path(broken, "pyproject.toml"))
  python <- Sys.which("python3")
  skip_if(!nzchar(python), "no python3 on the PATH")
  expect_error(install_pyfastopt(envname = env, package = broken, python = python),
               "pip could not install pyfastopt and torch\\. The new environment .* was removed again")
  expect_false(dir.exists(env))
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

test_that("the vignettes are installed with the package", {
  skip_if_no_pyfastopt()   # they are knitted (by R CMD build) only where the Python side works
  items <- utils::vignette(package = "pyfastopt")$results[, "Item"]
  expect_true(all(c("optimizer", "training") %in% items))
  html <- system.file("doc", "optimizer.html", package = "pyfastopt")
  expect_true(file.exists(html))
  expect_gt(file.size(html), 10000)
})
