"""R inside Python through rpy2, as in Jupyter's %%R cells: library(pyfastopt) in the embedded
R works on this process's tensors. Run as a script by tests/test_rpy2.py (argv[1]: the R library
holding the pyfastopt R package; argv[2]: number of R-side optimizer steps). Prints JSON."""
import json
import sys

import torch

import pyfastopt
import rpy2.robjects as ro

lib, n_steps = sys.argv[1], int(sys.argv[2])
ro.r(f'.libPaths(c("{lib}", .libPaths()))')
ro.r('suppressMessages(library(pyfastopt))')
out = {}

# Python's tensors, seen from R (reticulate binds to this very interpreter)
import __main__
p = pyfastopt.tst_param([1., 2., 3.], [0.1, 0.2, 0.3])
__main__.p = p
out["same_module"] = bool(ro.r('reticulate::py_id(reticulate::import("pyfastopt"))')[0] == str(id(pyfastopt)))
out["same_tensor"] = bool(ro.r('reticulate::py_id(reticulate::py$p)')[0] == str(id(p)))
out["r_print"] = list(ro.r('capture.output({opt <- SGD(list(reticulate::py$p), lr = 0.1); opt$step(); '
                           'print(reticulate::py$p)})'))
out["python_sees"] = p.tolist()

# a tensor made in R, used by Python
ro.r('reticulate::py_run_string("pass"); main <- reticulate::import_main(); '
     'main$q <- tst_param(c(4, 5, 6), c(1, 1, 1))')
q = __main__.q
pyfastopt.SGD([q], lr=0.5).step()
out["q_after_python_step"] = q.tolist()
out["r_sees_q"] = list(ro.r('capture.output(print(main$q))'))

# many steps from R (with_python_gil keeps the GIL while R runs the loop), compared with the
# same optimizer stepped from Python
ps = [pyfastopt.tst_param([1., 2., 3.], [0.1, 0.2, 0.3]) for _ in range(4)]
ref = [pyfastopt.tst_param([1., 2., 3.], [0.1, 0.2, 0.3]) for _ in range(4)]
__main__.ps = ps
ro.r('opt <- Adam(reticulate::py$ps, lr = 0.01)')
chunk = 250
for _ in range(n_steps // chunk):
    ro.r(f'with_python_gil(for (i in 1:{chunk}) opt$step())')
opt = pyfastopt.Adam(ref, lr=0.01)
for _ in range(n_steps // chunk * chunk):
    opt.step()
out["steps"] = n_steps // chunk * chunk
out["same_as_python"] = all(torch.equal(a, b) for a, b in zip(ps, ref))
out["r_tempdir"] = ro.r('tempdir()')[0]
print("JSON:" + json.dumps(out))
sys.stdout.flush()
