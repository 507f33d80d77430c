# R side of bench/r_vs_python_step.py: time (CPU) an R loop of opt$step() for each
# configuration and print one JSON line per configuration ("R:{...}").
# Usage: Rscript bench/bench_r_step.R <n_steps> <repeats>
library(pyfastopt)
args <- commandArgs(trailingOnly = TRUE)
n <- as.integer(args[1]); reps <- as.integer(args[2])
torch <- reticulate::import("torch")
torch$set_num_threads(1L)

make_params <- function(sizes) {
  torch$manual_seed(0L)
  lapply(sizes, function(s) {
    p <- torch$randn(as.integer(s))
    p$grad <- torch$randn(as.integer(s)) * 0.01
    p
  })
}
# R closures as steppers: Python calls back into R for every parameter, every step
r_weight_decay <- function(p, lr, wd, do_wd = TRUE, ...) {
  if (do_wd && wd != 0) p$data$mul_(1 - lr * wd)
  NULL
}
r_sgd_step <- function(p, lr, ...) { p$data$add_(p$grad$data, alpha = -lr); NULL }
# an R momentum stepper pair; marked multi_tensor(): one R call per stepper per bucket, on lists
# of tensors (TensorLists)
r_average_grad <- function(p, mom, grad_avg = NULL, ...) {
  if (is.null(grad_avg)) grad_avg <- p$grad$clone()$zero_()
  grad_avg$mul_(mom)$add_(p$grad)
  list(grad_avg = grad_avg)
}
r_momentum_step <- function(p, lr, grad_avg, ...) { p$data$add_(grad_avg, alpha = -lr); NULL }

configs <- list(
  list(name = "steppers-from-R: Optimizer(list(weight_decay, sgd_step)), 4 scalars",
       sizes = rep(1, 4), make = function(p) Optimizer(p, list(weight_decay, sgd_step), lr = 0.1, wd = 0.01)),
  list(name = "Adam, 4 x 1000", sizes = rep(1000, 4), make = function(p) Adam(p, lr = 1e-3)),
  list(name = "Adam, MLP 784-256-10 (4 tensors, 203k)", sizes = c(784 * 256, 256, 256 * 10, 10),
       make = function(p) Adam(p, lr = 1e-3)),
  list(name = "ranger (Lookahead+RAdam), 8 x 1000", sizes = rep(1000, 8), make = function(p) ranger(p, lr = 1e-3)),
  list(name = "SLOW PATH: R closures as steppers, 4 scalars", sizes = rep(1, 4),
       make = function(p) Optimizer(p, list(r_weight_decay, r_sgd_step), lr = 0.1, wd = 0.01)),
  list(name = "STEPPERS: built-in SGD(mom = 0.9), 100 scalars", sizes = rep(1, 100),
       make = function(p) SGD(p, lr = 0.1, mom = 0.9)),
  list(name = "STEPPERS: R momentum pair, multi_tensor, 100 scalars", sizes = rep(1, 100),
       make = function(p) Optimizer(p, list(multi_tensor(r_average_grad), multi_tensor(r_momentum_step)),
                                    lr = 0.1, mom = 0.9)),
  list(name = "SLOW PATH: R momentum pair, per param, 100 scalars", sizes = rep(1, 100),
       make = function(p) Optimizer(p, list(r_average_grad, r_momentum_step), lr = 0.1, mom = 0.9))
)
for (cfg in configs) {
  params <- make_params(cfg$sizes)
  opt <- cfg$make(params)
  nn <- if (grepl("SLOW", cfg$name)) max(20L, n %/% 100L) else if (grepl("R momentum", cfg$name)) max(50L, n %/% 10L) else n
  for (i in 1:20) opt$step()
  best <- Inf
  for (r in seq_len(reps)) {
    # process CPU time (R and the Python it embeds, one torch thread): other load on the
    # machine inflates wall time, much less CPU time
    st <- system.time(for (i in seq_len(nn)) opt$step())
    t <- st[["user.self"]] + st[["sys.self"]]
    best <- min(best, t)
  }
  cat(sprintf('R:{"name": "%s", "us_per_step": %.2f, "steps": %d}\n', cfg$name, 1e6 * best / nn, nn))
}
