#!/usr/bin/env python3
"""PyTorch half of the CPU training-throughput benchmark: one optimiser step of the official SFTok code.

The official SFTok code (github.com/Neur-IO/SFTok, commit 0e98df00) is imported from the folder given by
--official; nothing of it is copied into this repository. The model has the sizes of the Rust port's `demo`
training preset:

    image 64x64; ViT encoder and decoder: patch 8, width 128, depth 4, heads 4; 32 latent tokens;
    OptVQ codebook 1024 x 12 (token_size 12); MaskGIT-VQGAN (teacher and pixel decoder): hidden 32,
    channel_mult [1, 2, 2, 4], 1 res block, z_channels 32, 512 codes, f8 -> 8x8 grid = 64 proxy codes;
    mask token id 512.

The official size tables and the hard-coded VQGAN sizes are inline literals, so three official files are
patched *in memory* (the same textual substitutions as the parity fixture generator and
bench/pytorch_reconstruct.py --size tiny, with asserted match counts); the files on disk are not changed.

One timed step = everything the official `train_one_epoch` does for one batch that matters for compute:

  stage1   teacher.encode(x) (no_grad, frozen PretrainedTokenizer with the patched VQGAN, random init)
           -> model(x, proxy_codes, mask_all=True)            [finetune_decoder False]
           -> official ReconstructionLoss_MLMStage1 (per-token CE, weight 1 masked / 0.1 unmasked,
              normalised by the weight sum, + quantizer loss)
  stage2   teacher.encode(x); no_grad generate_guided_mask(x, proxy_codes, mask_all=True)
           -> model(x, proxy_codes, mask_all=False, guided_mask=...) with model.decoder.replace_prob = 1.0
           -> same loss
  stage3   [finetune_decoder True: encoder, OptVQ, latent tokens frozen by the official constructor]
           proxy codes = randint (the official loop has no teacher in stage 3; they are replaced entirely by
           the guided tokens) ; no_grad generate_guided_mask ; model(x, proxy_codes, guided_mask=...)
           -> loss = MSE(x, pixels) ONLY (no LPIPS, no GAN discriminator, no constant frozen-quantizer term)
  teacher  MaskGIT-VQGAN Encoder -> VectorQuantizer -> Decoder (official modules, patched sizes), loss =
           MSE(rec, x) + codebook loss + 0.25 * commitment loss, straight-through estimator

then loss.backward(); clip_grad_norm_(params, 1.0); AdamW(lr 1e-4, betas (0.9, 0.99), wd 1e-4).step();
zero_grad(set_to_none=True). float32, on the CPU (or the first GPU with --device cuda). Not included: EMA update, lr scheduler, logging (unique-ratio,
gather), data loading (one fixed batch of random images in [0, 1], seed 1, is reused every step).

    python bench/pytorch_train.py --official /path/to/SFTok --stage stage1 --batch 16 --steps 10 \
        --warmup 2 --threads 2

Human-readable lines go to stderr; the last (and only) line on stdout is one JSON object:
    {"impl":"pytorch","stage":...,"batch":...,"threads":...,"ms_per_step_median":...,"images_per_sec":...,
     "peak_rss_mib":..., ...}
peak_rss_mib is ru_maxrss of the whole process (imports and model construction included).
"""

import argparse
import ast
import io
import json
import math
import os
import resource
import statistics
import sys
import time
import types
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# `--device cuda` must be known before the import below, which hides the GPUs from a CPU run.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--device", default="cpu")
if _pre.parse_known_args()[0].device == "cuda":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
# Stubs, bare packages and the textual-patch helpers are shared with the reconstruction benchmark
# (importing it also sets CUDA_VISIBLE_DEVICES="" unless already set, and imports torch).
from pytorch_reconstruct import (  # noqa: E402
    _SIZE_TABLE, _VQGAN_CONF, _load_patched, install_bare_packages, install_stubs, log,
    rss_now_mib)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

STAGES = ("stage1", "stage2", "stage3", "teacher")

# --------------------------------------------------------------------------------------------------
# The `demo` preset of the Rust port
# --------------------------------------------------------------------------------------------------

IMAGE = 64
VIT = {"width": 128, "num_layers": 4, "num_heads": 4}   # encoder and decoder
PATCH = 8
LATENT_TOKENS = 32
OPTVQ_CODES, TOKEN_SIZE = 1024, 12
DEMO_VQGAN = {
    "num_embeddings": 512,
    "embedding_dim": 32,
    "grid": 8,  # f8 on 64 px
    "conf": {
        "channel_mult": [1, 2, 2, 4],
        "num_resolutions": 4,
        "dropout": 0.0,
        "hidden_channels": 32,
        "num_channels": 3,
        "num_res_blocks": 1,
        "resolution": 64,
        "z_channels": 32,
    },
}
NUM_PROXY = DEMO_VQGAN["grid"] ** 2  # 64
SIZE_NAME = "bench_demo"
DEMO_SIZES = {k: {SIZE_NAME: v} for k, v in VIT.items()}

LR, BETAS, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-4, (0.9, 0.99), 1e-4, 1.0

GENERATOR = {  # decode() reads model.generator.class_label_dropout, absent from the stage configs
    "guidance_scale": 0.0, "randomize_temperature": 0.0, "num_steps": 8, "guidance_decay": "constant",
    "guidance_scale_pow": 3.0, "softmax_temperature_annealing": False, "class_label_dropout": 0.0,
}


# --------------------------------------------------------------------------------------------------
# Loading the official code with the demo sizes
# --------------------------------------------------------------------------------------------------

def _load_demo(name, path, patches):
    return _load_patched(name, path, patches, DEMO_SIZES, DEMO_VQGAN)


def load_demo_patched(official):
    sizes = r'\1\3**_BENCH_SIZES["\2"], \4'  # add the demo entry to each inline size table
    mm = os.path.join(official, "modeling", "modules")
    _load_demo("modeling.modules.blocks", os.path.join(mm, "blocks.py"), [
        (_SIZE_TABLE, sizes, 6, "blocks.py size tables", True),
    ])
    _load_demo("modeling.modules.blocks_multistep", os.path.join(mm, "blocks_multistep.py"), [
        (_SIZE_TABLE, sizes, 3, "blocks_multistep.py size tables", True),
        ("nn.Conv2d(2 * self.width, 1024, 1, padding=0, bias=True)",
         'nn.Conv2d(2 * self.width, _BENCH_VQGAN["num_embeddings"], 1, padding=0, bias=True)',
         1, "ffn output channels"),
    ])
    return _load_demo("modeling.sftok", os.path.join(official, "modeling", "sftok.py"), [
        ("num_embeddings=1024, embedding_dim=256",
         'num_embeddings=_BENCH_VQGAN["num_embeddings"], embedding_dim=_BENCH_VQGAN["embedding_dim"]',
         2, "Pixel_Quantizer sizes"),
        (_VQGAN_CONF, 'dict(_BENCH_VQGAN["conf"])', 2, "MaskGIT-VQGAN conf", True),
        (", 1024, 16, 16)", ', _BENCH_VQGAN["num_embeddings"], _BENCH_VQGAN["grid"], _BENCH_VQGAN["grid"])',
         2, "logits reshape"),
    ])


def load_official_mlm_loss(official):
    """ReconstructionLoss_MLMStage1, taken verbatim from modeling/modules/losses.py. That module imports the
    diffusion head, LPIPS, the discriminators, ... at top level, so only this class's source is executed."""
    path = os.path.join(official, "modeling", "modules", "losses.py")
    with open(path, encoding="utf-8") as f:
        src = f.read()
    tree = ast.parse(src)
    nodes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ReconstructionLoss_MLMStage1"]
    if len(nodes) != 1:
        raise RuntimeError(f"ReconstructionLoss_MLMStage1 not found in {path}")
    from typing import Mapping, Text, Tuple
    from einops import rearrange
    ns = {"torch": torch, "nn": nn, "F": F, "rearrange": rearrange,
          "Mapping": Mapping, "Text": Text, "Tuple": Tuple, "__name__": "official_losses"}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), ns)
    return ns["ReconstructionLoss_MLMStage1"]


def stage_config(official, stage):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(official, "configs", f"sftok_b64_{stage}.yaml"))
    cfg.model.generator = OmegaConf.create(GENERATOR)
    cfg.dataset.preprocessing.crop_size = IMAGE
    vq, dec = cfg.model.vq_model, cfg.model.decoder
    vq.vit_enc_model_size = SIZE_NAME
    vq.vit_enc_patch_size = PATCH
    vq.num_latent_tokens = LATENT_TOKENS
    vq.codebook_size = OPTVQ_CODES
    vq.token_size = TOKEN_SIZE
    vq.semantic_guide = None
    dec.vit_dec_model_size = SIZE_NAME
    dec.vit_dec_patch_size = PATCH
    dec.num_latent_tokens = LATENT_TOKENS
    dec.token_size = TOKEN_SIZE
    dec.num_proxy_codes = NUM_PROXY
    dec.codebook_size = DEMO_VQGAN["num_embeddings"]  # mask token id = 512
    # what the timed step does is spelled out in make_step(); check the configs agree with it
    expect = {"stage1": (False, True, False), "stage2": (False, False, True), "stage3": (True, False, True)}[stage]
    got = (bool(vq.finetune_decoder), bool(cfg.training.single_step_generation), bool(cfg.training.guided_mask))
    if got != expect:
        raise RuntimeError(f"{stage}: (finetune_decoder, single_step_generation, guided_mask) = {got}, "
                           f"expected {expect}")
    return cfg


def build_teacher(sftok):
    """The official PretrainedTokenizer (patched VQGAN sizes) with a random-init state dict: its constructor
    insists on torch.load-ing a weight file, so it is handed an in-memory one built from the same modules."""
    from omegaconf import OmegaConf

    conf = OmegaConf.create(dict(DEMO_VQGAN["conf"]))
    init = nn.Module()
    init.encoder = sftok.Pixel_Eecoder(conf)
    init.decoder = sftok.Pixel_Decoder(conf)
    init.quantize = sftok.Pixel_Quantizer(num_embeddings=DEMO_VQGAN["num_embeddings"],
                                          embedding_dim=DEMO_VQGAN["embedding_dim"], commitment_cost=0.25)
    buf = io.BytesIO()
    torch.save(init.state_dict(), buf)
    buf.seek(0)
    return sftok.PretrainedTokenizer(buf)


# --------------------------------------------------------------------------------------------------
# The training steps
# --------------------------------------------------------------------------------------------------

class VQGAN(nn.Module):
    """MaskGIT-VQGAN built from the official Encoder / VectorQuantizer / Decoder."""

    def __init__(self, sftok):
        super().__init__()
        from omegaconf import OmegaConf

        conf = OmegaConf.create(dict(DEMO_VQGAN["conf"]))
        self.encoder = sftok.Pixel_Eecoder(conf)
        self.quantize = sftok.Pixel_Quantizer(num_embeddings=DEMO_VQGAN["num_embeddings"],
                                              embedding_dim=DEMO_VQGAN["embedding_dim"], commitment_cost=0.25)
        self.decoder = sftok.Pixel_Decoder(conf)

    def forward(self, x):
        h = self.encoder(x)                          # B, 32, 8, 8
        # Official nearest-code search (distances, argmin, one-hot @ codebook); its own return_loss=True
        # weighs the two terms the other way round (commitment 1, codebook 0.25), so the loss is formed here.
        z_q, _, _ = self.quantize(h, return_loss=False)
        codebook = torch.mean((z_q - h.detach()) ** 2)
        commitment = torch.mean((z_q.detach() - h) ** 2)
        z_st = h + (z_q - h).detach()                # straight-through
        rec = self.decoder(z_st)
        return rec, codebook, commitment


def make_step(args, official, dev):
    """Returns (module whose parameters are trained, step(x) -> (loss tensor, extra dict), description)."""
    with redirect_stdout(sys.stderr):  # the official modules print their attention mode at import
        sftok = load_demo_patched(official)

    torch.manual_seed(0)
    if args.stage == "teacher":
        model = VQGAN(sftok).float().train().to(dev)

        def step(x):
            rec, codebook, commitment = model(x)
            mse = F.mse_loss(rec, x)
            return mse + codebook + 0.25 * commitment, {"mse": mse.detach(), "codebook": codebook.detach()}

        return model, step, "VQGAN teacher: MSE + codebook + 0.25 commitment (straight-through)"

    cfg = stage_config(official, args.stage)
    model = sftok.SFTok(cfg).float().to(dev)
    model.train()
    if args.stage == "stage2":
        model.decoder.replace_prob = 1.0
    B = args.batch

    if args.stage in ("stage1", "stage2"):
        teacher = build_teacher(sftok).float().to(dev)  # frozen: eval(), requires_grad False
        loss_module = load_official_mlm_loss(official)(config=cfg)
        guided = args.stage == "stage2"

        def step(x):
            model.train()
            teacher.eval()
            proxy_codes = teacher.encode(x)  # (B, 64) in [0, 512), no_grad
            if guided:
                with torch.no_grad():
                    guided_mask = model.generate_guided_mask(x=x, proxy_codes=proxy_codes, use_semantic=False,
                                                             mask_all=True)
            else:
                guided_mask = None
            logits, extra, masks, _ = model(x=x, proxy_codes=proxy_codes, use_semantic=False,
                                            mask_all=not guided, guided_mask=guided_mask)
            loss, d = loss_module(proxy_codes, logits, extra, masks=masks, use_mlm=True)
            return loss, {"ce": d["reconstruction_loss"], "quantizer": d["quantizer_loss"]}

        what = ("stage1: teacher.encode + model(mask_all=True) + MLM CE + quantizer loss" if not guided else
                "stage2 (SFVR): teacher.encode + generate_guided_mask + model(guided, replace_prob 1.0) "
                "+ MLM CE + quantizer loss")
        return model, step, what

    # stage3: the official loop has no pretrained tokenizer here and draws random proxy codes (hard-coded
    # randint(0, 1024, (B, 256)); the demo sizes are used instead). With finetune_decoder the decoder's
    # masking_tokens replaces them all by the guided tokens, so their values do not matter.
    gen = torch.Generator().manual_seed(2)

    def step(x):
        model.train()
        proxy_codes = torch.randint(0, DEMO_VQGAN["num_embeddings"], (B, NUM_PROXY), generator=gen).to(dev)
        with torch.no_grad():
            guided_mask = model.generate_guided_mask(x=x, proxy_codes=proxy_codes, use_semantic=False,
                                                     mask_all=True)
        pixels, extra, masks, _ = model(x=x, proxy_codes=proxy_codes, use_semantic=False,
                                        mask_all=False, guided_mask=guided_mask)
        mse = F.mse_loss(x.contiguous(), pixels.contiguous())  # reconstruction_weight 1.0
        return mse, {"mse": mse.detach()}

    return model, step, ("stage3: generate_guided_mask + model(guided) + pixel decoder; loss = MSE only "
                         "(no LPIPS, no GAN)")


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="root of the official SFTok repository (work tree)")
    ap.add_argument("--stage", choices=STAGES, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed optimiser steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed optimiser steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the first GPU, each step ended by torch.cuda.synchronize()")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed steps, run 3 more under torch.profiler and print its per-operator "
                         "table (self CPU time) to stderr")
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--batch, --steps and --threads must be >= 1, --warmup >= 0")

    official = os.path.abspath(args.official)
    if not os.path.isfile(os.path.join(official, "modeling", "sftok.py")):
        sys.exit(f"error: {official}/modeling/sftok.py not found; is --official the root of the SFTok repo?")

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.set_default_dtype(torch.float32)

    sys.path.insert(0, official)
    install_stubs()
    install_bare_packages(official)

    t0 = time.perf_counter()
    dev = torch.device(args.device)
    model, step, what = make_step(args, official, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    # The official create_optimizer splits no-decay groups; for timing one group is equivalent.
    optimizer = torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    build_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, IMAGE, IMAGE, generator=gen, dtype=torch.float32).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    log(f"stage {args.stage}: {what}")
    log(f"demo sizes; {n_train:,} trainable of {n_all:,} parameters (random init, seed 0), built in "
        f"{build_s:.1f} s; rss {rss_now_mib():.0f} MiB")
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, image {IMAGE}px, "
        f"fp32, AdamW lr {LR} betas {BETAS} wd {WEIGHT_DECAY}, clip_grad_norm {MAX_GRAD_NORM}; "
        f"warm-up {args.warmup}, timed steps {args.steps}; EMA, lr schedule and data loading not included")

    def train_step():
        t_a = time.perf_counter()
        loss, extra = step(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        t_b = time.perf_counter()
        return (t_b - t_a) * 1e3, loss.detach(), extra

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        ms, loss, extra = train_step()
        lv = float(loss)
        if not math.isfinite(lv):
            sys.exit(f"error: non-finite loss {lv} at step {i + 1}")
        losses.append(lv)
        timed = i >= args.warmup
        if timed:
            times.append(ms)
        parts = ", ".join(f"{k} {float(v):.4f}" for k, v in extra.items())
        log(f"{'step' if timed else 'warm-up'} {i + 1 - (args.warmup if timed else 0)}: {ms:.1f} ms, "
            f"loss {lv:.4f} ({parts})")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                train_step()
        log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    med = statistics.median(times)
    ips = args.batch / (med / 1e3)
    log(f"median {med:.1f} ms/step, min {min(times):.1f} ms/step, {ips:.2f} images/s; "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; peak RSS {peak_rss_mib:.0f} MiB (whole process)")
    if args.stage == "stage3":
        log("note: stage3 loss is MSE only; the official stage 3 adds LPIPS and a (DINO) GAN loss, not timed here")
    log("note: EMA update is not included in the timing")
    result = {
        "impl": "pytorch",
        "stage": args.stage,
        "batch": args.batch,
        "threads": args.threads,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "ms_per_step_median": round(med, 3),
        "images_per_sec": round(ips, 3),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "ms_per_step_min": round(min(times), 3),
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "trainable_params": n_train,
        "loss_first": round(losses[0], 6),
        "loss_last": round(losses[-1], 6),
        "excluded": "EMA, lr scheduler, logging, data loading" + (", LPIPS, GAN" if args.stage == "stage3" else ""),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
