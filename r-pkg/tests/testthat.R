library(testthat)
library(pyfastopt)

test_check("pyfastopt")
