"""GPU benchmark: Adam on 100M fp32 params (4 tensors of 25M, and 2,000 x 50k), pyfastopt vs
torch fused, against the HBM floor measured in the same run (device copy bandwidth x 28 B/param)."""
import statistics
import torch
import pyfastopt as po


def timed(f, reps=20):
    f(); f(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main():
    assert torch.cuda.is_available(), "no GPU"
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    x = torch.empty(500_000_000, device="cuda"); y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x), 10)
    bw = 2 * 4 * x.numel() / (ms / 1e3) / 1e9
    del x, y
    print(f"device copy: {bw:.0f} GB/s")
    for label, shapes in [("4 x 25M", [(25_000_000,)] * 4), ("2000 x 50k", [(50_000,)] * 2000)]:
        n = sum(s[0] for s in shapes)
        ps = [torch.randn(s, device="cuda") * 0.02 for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        floor = 28 * n / (bw * 1e9) * 1e3
        res = {"pyfastopt Adam": timed(po.Adam(ps, lr=1e-3, wd=0.).step),
               "torch Adam fused": timed(torch.optim.Adam(ps, lr=1e-3, fused=True).step)}
        for k, v in res.items():
            print(f"{label}: {k:18s} {v:7.3f} ms  {100 * floor / v:5.1f}% of HBM floor ({floor:.3f} ms)")
        del ps
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
