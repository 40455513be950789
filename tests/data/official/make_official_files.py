"""Writes the parity set's weights in the official formats, for the import tests.

- pytorch_model.bin: the SFTok state dict as `torch.save` writes it (zip + pickle), with the older
  key name `decoder.embedding_positional_embedding` that early checkpoints use.
- maskgit-vqgan-teacher.bin: the teacher's state dict.
- config.json: the official nested config (`model.vq_model`, `model.decoder`, ...) plus the
  fixture generator's size tables, as the parity set's config.json holds them.

Run with torch >= 1.6 and safetensors installed:
    python make_official_files.py ../../../core/tests/data/parity/public
"""
import json
import sys

import torch
from safetensors.torch import load_file

src = sys.argv[1]
sd = load_file(f"{src}/weights.safetensors")
sd["decoder.embedding_positional_embedding"] = sd.pop("decoder.learnable_embedding_positional_embedding")
torch.save(sd, "pytorch_model.bin")
torch.save(load_file(f"{src}/teacher.safetensors"), "maskgit-vqgan-teacher.bin")
cfg = json.load(open(f"{src}/config.json"))
official = dict(cfg["official_config"])
official["parity_sizes"] = cfg["parity_sizes"]
official["parity_vqgan"] = cfg["parity_vqgan"]
json.dump(official, open("config.json", "w"), indent=2)
