test_that("with_python_gil() evaluates its argument (outside rpy2: directly)", {
  skip_if_no_pyfastopt()
  params <- tst_param(c(1, 2, 3), c(0.1, 0.2, 0.3))
  opt <- SGD(params, lr = 0.1)
  with_python_gil(for (i in 1:10) opt$step())
  expect_equal(vals(params), c(0.9, 1.8, 2.7), tolerance = 1e-5)
  expect_equal(with_python_gil(1 + 1), 2)
  expect_invisible(with_python_gil(invisible(3)))
  expect_error(with_python_gil(stop("boom")), "boom")
  # R as the main program: not under rpy2, so no exit fix was applied
  expect_false(isTRUE(pyfastopt:::.pkg$under_rpy2))
})
