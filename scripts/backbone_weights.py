"""Writes a feature backbone from a `kiln train classifier` checkpoint: its weights and its
kind/config metadata only (the optimizer's moments and counters dropped), as kiln ships them
in backbones/. Run: pip install safetensors numpy && python3 scripts/backbone_weights.py
CHECKPOINT OUT [--note TEXT]
"""
import argparse

from safetensors import safe_open
from safetensors.numpy import save_file

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("checkpoint")
ap.add_argument("out")
ap.add_argument("--note", default="", help="how the weights were trained, stored as metadata")
args = ap.parse_args()

with safe_open(args.checkpoint, "np") as f:
    meta = f.metadata()
    if meta.get("kind") != "classifier":
        raise SystemExit(f"{args.checkpoint}: a {meta.get('kind')!r} checkpoint, not a classifier")
    # The model's tensors are named after its two parts; everything else is optimizer state.
    tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("features.", "head."))}
keep = {k: meta[k] for k in ("kind", "config", "step", "seed")}
if args.note:
    keep["note"] = args.note
save_file(tensors, args.out, metadata=keep)
print(f"{args.out}: {len(tensors)} tensors, {sum(t.size for t in tensors.values())} weights")
