"""The transformer's linear-layer products (SFTok-B, batch 8 = 2,568 token rows, and batch 1) with
PyTorch's `F.linear` on 2 threads: the side-by-side figures for `cargo run --release --example
probe_gemm` (BENCHMARKS.md). Best of 4 per shape, in GFLOP/s."""
import torch, time
torch.set_num_threads(2)
for (m,k,n) in [(2568,768,3072),(2568,3072,768),(2568,768,2304),(321,768,3072)]:
    a=torch.randn(m,k); w=torch.randn(n,k); b=torch.randn(n)
    best=1e9
    for _ in range(4):
        t=time.perf_counter(); torch.nn.functional.linear(a,w,b); best=min(best,time.perf_counter()-t)
    print(f"{m}x{k}x{n}: torch {2*m*k*n/best/1e9:.0f} GFLOP/s")
