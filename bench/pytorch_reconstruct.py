#!/usr/bin/env python3
"""PyTorch half of the side-by-side CPU benchmark: 8-step SFTok reconstruction with the official code.

The official SFTok code (github.com/Neur-IO/SFTok) is imported from the folder given by --official;
nothing of it is copied into this repository. What is measured is the official inference path,

    z_q, res = model.encode(x)
    model.decode_tokens(res["min_encoding_indices"])   # decoder.generate (8 steps) + pixel decoder

on random images in [0, 1], float32, model.eval(), torch.no_grad(), random weights (torch.manual_seed(0)).

    python bench/pytorch_reconstruct.py --official /path/to/SFTok --batch 1 --iters 5 --threads 2 [--size b|tiny]

Human-readable lines go to stderr; the last (and only) line on stdout is one JSON object:
    {"impl":"pytorch","torch":...,"threads":...,"batch":...,"ms_per_batch_median":...,
     "ms_per_image_median":...,"ms_per_batch_min":...,"peak_rss_mib":...,"model":...,"iters":...}
peak_rss_mib is ru_maxrss of the whole process (model construction included), not a per-op figure.

Imports the benchmark does not need are stubbed before `modeling.sftok` is imported:
  * timm.create_model                      (only used for the optional dinov2 semantic guide)
  * accelerate.utils.operations.gather     (only used in training / losses)
  * huggingface_hub.PyTorchModelHubMixin   (a plain mixin without parameters)
and the package `__init__.py` files of `modeling`, `modeling.modules` and `modeling.quantizer` are not run
(the one of `modeling.modules` pulls in the losses, LPIPS, torchvision, the diffusion head, ...).

--size tiny builds the tiny model of the parity fixtures (64 px, ViT width 64 / depth 2 / 4 heads,
8 latent tokens, OptVQ 32x8, 16 proxy codes, VQGAN vocab 64, hidden 32, channel_mult [1,1,1,1,2]),
the size of the Rust port's bundled default model. The official size tables and the hard-coded MaskGIT-VQGAN
sizes are inline literals, so for `tiny` three official source files are patched *in memory* with textual
substitutions whose match counts are asserted (the same patches as the parity fixture generator); the files on
disk are not changed. `--size b` imports the official files unmodified.
"""

import argparse
import json
import os
import re
import resource
import statistics
import sys
import time
import types
from contextlib import redirect_stdout

# A CPU benchmark: keep a CUDA build of torch from touching a GPU (the official Normalize helpers pick
# 'cuda' when available; they are not built here, but be explicit).
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Stubs for imports the benchmark does not need
# --------------------------------------------------------------------------------------------------

def install_stubs():
    def _create_model(*args, **kwargs):
        raise RuntimeError("timm is stubbed by the benchmark; the dinov2 semantic guide is not supported")

    timm = types.ModuleType("timm")
    timm_models = types.ModuleType("timm.models")
    timm_models.create_model = _create_model
    timm.models = timm_models
    timm.create_model = _create_model

    def _gather(tensor):
        # accelerate's gather across processes; a single process holds everything already.
        return tensor

    accelerate = types.ModuleType("accelerate")
    accelerate_utils = types.ModuleType("accelerate.utils")
    accelerate_ops = types.ModuleType("accelerate.utils.operations")
    accelerate_ops.gather = _gather
    accelerate_utils.operations = accelerate_ops
    accelerate_utils.gather = _gather
    accelerate.utils = accelerate_utils

    class PyTorchModelHubMixin:
        """Stand-in for huggingface_hub.PyTorchModelHubMixin: no parameters, no behaviour."""

        def __init_subclass__(cls, **kwargs):  # swallows tags=, repo_url=, license=, ...
            super().__init_subclass__()

    hf = types.ModuleType("huggingface_hub")
    hf.PyTorchModelHubMixin = PyTorchModelHubMixin

    for name, mod in {
        "timm": timm,
        "timm.models": timm_models,
        "accelerate": accelerate,
        "accelerate.utils": accelerate_utils,
        "accelerate.utils.operations": accelerate_ops,
        "huggingface_hub": hf,
    }.items():
        sys.modules[name] = mod


def install_bare_packages(official):
    """Register `modeling`, `modeling.modules`, `modeling.quantizer` as packages without running their
    `__init__.py`; submodules are then found on disk through `__path__` as usual."""
    for pkg in ("modeling", "modeling.modules", "modeling.quantizer"):
        folder = os.path.join(official, *pkg.split("."))
        if not os.path.isdir(folder):
            sys.exit(f"error: {folder} not found; is --official the root of the SFTok repository?")
        mod = types.ModuleType(pkg)
        mod.__path__ = [folder]
        mod.__package__ = pkg
        mod.__file__ = os.path.join(folder, "__init__.py")
        sys.modules[pkg] = mod
        parent, _, child = pkg.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)


# --------------------------------------------------------------------------------------------------
# Tiny model: in-memory patches of the official sources
# --------------------------------------------------------------------------------------------------

TINY_SIZES = {  # extra entries for the inline {"small","base","large"} tables
    "width": {"bench_tiny": 64},
    "num_layers": {"bench_tiny": 2},
    "num_heads": {"bench_tiny": 4},
}
TINY_VQGAN = {
    "num_embeddings": 64,
    "embedding_dim": 16,
    "grid": 4,
    "conf": {
        "channel_mult": [1, 1, 1, 1, 2],
        "num_resolutions": 5,
        "dropout": 0.0,
        "hidden_channels": 32,
        "num_channels": 3,
        "num_res_blocks": 1,
        "resolution": 64,
        "z_channels": 16,
    },
}

_SIZE_TABLE = re.compile(
    r"(self\.(width|num_layers|num_heads) = \{)(.*?)(\}\[self\.model_size\])", re.DOTALL)
_VQGAN_CONF = re.compile(r'\{"channel_mult": \[1, 1, 2, 2, 4\],.*?"z_channels": 256\}', re.DOTALL)


def _sub(pattern, repl, src, count, what, regex=False):
    if regex:
        out, n = pattern.subn(repl, src)
    else:
        n = src.count(pattern)
        out = src.replace(pattern, repl)
    if n != count:
        raise RuntimeError(f"tiny patch `{what}`: expected {count} matches, found {n} "
                           "(the official sources differ from commit 0e98df00)")
    return out


def _load_patched(name, path, patches, sizes=None, vqgan=None):
    """Runs an official module's source with textual `patches` applied, as module `name`, with
    the size tables `sizes` / `vqgan` (default: the tiny parity model) in its namespace."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    for args in patches:
        src = _sub(args[0], args[1], src, *args[2:])
    mod = types.ModuleType(name)
    mod.__file__ = path
    mod.__package__ = name.rpartition(".")[0]
    mod._BENCH_SIZES = TINY_SIZES if sizes is None else sizes
    mod._BENCH_VQGAN = TINY_VQGAN if vqgan is None else vqgan
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, mod)
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod


def load_tiny_patched(official):
    sizes = r'\1\3**_BENCH_SIZES["\2"], \4'  # add the tiny entry to each table
    mm = os.path.join(official, "modeling", "modules")
    _load_patched("modeling.modules.blocks", os.path.join(mm, "blocks.py"), [
        (_SIZE_TABLE, sizes, 6, "blocks.py size tables", True),
    ])
    _load_patched("modeling.modules.blocks_multistep", os.path.join(mm, "blocks_multistep.py"), [
        (_SIZE_TABLE, sizes, 3, "blocks_multistep.py size tables", True),
        ("nn.Conv2d(2 * self.width, 1024, 1, padding=0, bias=True)",
         'nn.Conv2d(2 * self.width, _BENCH_VQGAN["num_embeddings"], 1, padding=0, bias=True)',
         1, "ffn output channels"),
    ])
    _load_patched("modeling.sftok", os.path.join(official, "modeling", "sftok.py"), [
        ("num_embeddings=1024, embedding_dim=256",
         'num_embeddings=_BENCH_VQGAN["num_embeddings"], embedding_dim=_BENCH_VQGAN["embedding_dim"]',
         2, "Pixel_Quantizer sizes"),
        (_VQGAN_CONF, 'dict(_BENCH_VQGAN["conf"])', 2, "MaskGIT-VQGAN conf", True),
        (", 1024, 16, 16)", ', _BENCH_VQGAN["num_embeddings"], _BENCH_VQGAN["grid"], _BENCH_VQGAN["grid"])',
         2, "logits reshape"),
    ])


# --------------------------------------------------------------------------------------------------
# Model and config
# --------------------------------------------------------------------------------------------------

GENERATOR = {
    "guidance_scale": 0.0,
    "randomize_temperature": 0.0,
    "num_steps": 8,
    "guidance_decay": "constant",
    "guidance_scale_pow": 3.0,
    "softmax_temperature_annealing": False,
    "class_label_dropout": 0.0,
}


def build_config(official, size):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(official, "configs", "infer_sftok.yaml"))
    cfg.model.generator = OmegaConf.create(GENERATOR)
    cfg.model.vq_model.finetune_decoder = True
    if size == "tiny":
        vq, dec = cfg.model.vq_model, cfg.model.decoder
        cfg.dataset.preprocessing.crop_size = 64
        vq.vit_enc_model_size = "bench_tiny"
        vq.vit_enc_patch_size = 16
        vq.num_latent_tokens = 8
        vq.codebook_size = 32
        vq.token_size = 8
        dec.vit_dec_model_size = "bench_tiny"
        dec.vit_dec_patch_size = 16
        dec.num_latent_tokens = 8
        dec.token_size = 8
        dec.num_proxy_codes = 16  # (64 / 16)^2
        dec.codebook_size = TINY_VQGAN["num_embeddings"]
    return cfg


def build_model(official, size):
    official = os.path.abspath(official)
    if not os.path.isfile(os.path.join(official, "modeling", "sftok.py")):
        sys.exit(f"error: {official}/modeling/sftok.py not found")
    sys.path.insert(0, official)
    install_stubs()
    install_bare_packages(official)
    # The official modules print their attention mode at import; keep stdout for the JSON line.
    with redirect_stdout(sys.stderr):
        if size == "tiny":
            load_tiny_patched(official)
        import importlib
        sftok = importlib.import_module("modeling.sftok")
    cfg = build_config(official, size)
    torch.manual_seed(0)
    model = sftok.SFTok(cfg)
    model = model.float().eval()
    return model, cfg


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------

def rss_now_mib():
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def install_part_timers(model, parts):
    """Wraps the forward of the encoder, the multi-step decoder and the pixel decoder with clocks, so the
    time per part can be set beside the Rust `--breakdown` figures (the sum is the whole run minus glue)."""
    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            total, calls = parts.get(name, (0.0, 0))
            parts[name] = (total + (time.perf_counter() - t) * 1e3, calls + 1)
            return out
        return wrapper
    model.encoder.forward = timed("encoder (ViT)", model.encoder.forward)
    model.decoder.forward = timed("decoder step", model.decoder.forward)
    model.pixel_decoder.forward = timed("pixel decoder", model.pixel_decoder.forward)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="root of the official SFTok repository (work tree)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5, help="timed iterations (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--size", choices=["b", "sftok-b", "tiny"], default="b")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the parts (encoder, one decoder step, pixel decoder), as the Rust --breakdown")
    args = ap.parse_args()
    if args.batch < 1 or args.iters < 1 or args.threads < 1:
        ap.error("--batch, --iters and --threads must be >= 1")
    size = "b" if args.size == "sftok-b" else args.size

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.set_default_dtype(torch.float32)

    rss_torch = rss_now_mib()
    t0 = time.perf_counter()
    model, cfg = build_model(args.official, size)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    image_size = int(cfg.dataset.preprocessing.crop_size)
    log(f"model: {'SFTok-B' if size == 'b' else 'tiny (parity-fixture sizes)'}, {n_params:,} parameters, "
        f"random init (seed 0), built in {build_s:.1f} s; rss {rss_torch:.0f} MiB after importing torch, "
        f"{rss_now_mib():.0f} MiB after building the model")
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
        f"image {image_size}px, steps {cfg.model.generator.num_steps}, warm-up 1, iters {args.iters}")

    parts = {}
    if args.breakdown:
        install_part_timers(model, parts)

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, image_size, image_size, generator=gen, dtype=torch.float32)

    def reconstruct():
        t_a = time.perf_counter()
        z_q, res = model.encode(x)
        t_b = time.perf_counter()
        out = model.decode_tokens(res["min_encoding_indices"])
        t_c = time.perf_counter()
        return out, (t_b - t_a) * 1e3, (t_c - t_b) * 1e3

    totals, encs, decs = [], [], []
    with torch.no_grad():
        out, e, d = reconstruct()  # warm-up
        log(f"warm-up: {e + d:.1f} ms (encode {e:.1f}, decode_tokens {d:.1f})")
        expected = (args.batch, 3, image_size, image_size)
        if tuple(out.shape) != expected or not torch.isfinite(out).all():
            sys.exit(f"error: unexpected output {tuple(out.shape)} (expected {expected}) or non-finite values")
        for i in range(args.iters):
            _, e, d = reconstruct()
            totals.append(e + d)
            encs.append(e)
            decs.append(d)
            log(f"iter {i + 1}/{args.iters}: {e + d:.1f} ms (encode {e:.1f}, decode_tokens {d:.1f})")

    if args.breakdown:
        runs = args.iters + 1
        for name, (total, calls) in parts.items():
            log(f"breakdown {name}: {total / calls:.1f} ms per call ({calls // runs} calls per reconstruction)")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    med = statistics.median(totals)
    log(f"median {med:.1f} ms/batch ({med / args.batch:.1f} ms/image), min {min(totals):.1f} ms/batch; "
        f"encode median {statistics.median(encs):.1f} ms, decode_tokens median {statistics.median(decs):.1f} ms")
    log(f"peak RSS {peak_rss_mib:.0f} MiB: whole-process peak (ru_maxrss: interpreter, torch, model construction "
        f"and the run), not the inference working set alone")
    result = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "ms_per_batch_median": round(med, 3),
        "ms_per_image_median": round(med / args.batch, 3),
        "ms_per_batch_min": round(min(totals), 3),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "model": "sftok-b" if size == "b" else "tiny",
        "iters": args.iters,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
