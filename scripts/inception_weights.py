"""pytorch-fid's FID Inception-v3 for kiln: converts its weights, and writes the conformance
fixture that proves kiln's network identical to pytorch-fid's.

Needs pytorch-fid itself (the oracle is its own module, not a copy):
    pip install torch torchvision pillow pytorch-fid safetensors numpy
It never downloads: pytorch-fid's weight download is replaced by the file you give.

Convert (the weights kiln's `--backbone inception` loads):
    # pt_inception-2015-12-05-6726825d.pth from
    # https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python3 scripts/inception_weights.py convert pt_inception-2015-12-05-6726825d.pth \
        ~/.cache/kiln/pt_inception-2015-12-05.safetensors
  keeps every tensor of the pool3 network under pytorch-fid's state-dict names
  (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ...) as f32, and drops
  the unused classifier (`fc.*`) and `num_batches_tracked`.

Conformance fixture (fixtures/inception.safetensors, tests/inception.rs):
    python3 scripts/inception_weights.py --random fixtures/inception.safetensors
  The whole network at full width, random weights. Full-width weights are ~87 MB, too big to
  ship, so the convolution weights are not shipped: both this script and the Rust test draw
  them from one counter-based generator (splitmix64 of a per-tensor key, below), bit for bit
  the same in both languages. What is shipped: the batch-norm tensors (weight, bias, and
  running statistics calibrated on random images so every layer sees realistic, non-trivial
  statistics), the input images, and pytorch-fid's pool3 features of them, computed in
  float64. To keep the lavapipe test short the images are resized to RESIZE (139) instead of
  299: pytorch-fid's own forward with its `size=(299, 299)` replaced, nothing else changed
  (every block still sees a feature map of at least 3x3, so every padding and border case
  runs). Also `resize/<i>/x`, `resize/<i>/y`: F.interpolate(bilinear, align_corners=False)
  of odd sizes up and down, for kiln's resize op alone.

Reference features for real weights (the ignored whole-network test at 299):
    python3 scripts/inception_weights.py reference pt_inception-2015-12-05-6726825d.pth out.safetensors
"""
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

SEED = 20261201
RESIZE = 139
CONV_FAN_GAIN = 6.0  # U(±sqrt(6 / fan_in)): He-uniform, variance 2 / fan_in

# pytorch-fid's InceptionV3 blocks, by position, as the names of fid_inception_v3()'s modules.
BLOCK_NAMES = [
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None],
    ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c", None],
]


def build(state_dict=None):
    """pytorch_fid.inception.InceptionV3([3]) (pool3), use_fid_inception=True, without its
    resize and input scaling (applied by `features`). Its weight download is replaced by
    `state_dict` (a .pth's), or skipped when None."""
    import pytorch_fid.inception as fid

    fid.load_state_dict_from_url = lambda *a, **k: state_dict
    real_load = torch.nn.Module.load_state_dict
    if state_dict is None:
        torch.nn.Module.load_state_dict = lambda self, *a, **k: None
    try:
        model = fid.InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True)
    finally:
        torch.nn.Module.load_state_dict = real_load
    return model.eval()


def pth_name(model_key):
    """`blocks.2.0.branch1x1.conv.weight` -> `Mixed_5b.branch1x1.conv.weight`."""
    _, b, m, rest = model_key.split(".", 3)
    return f"{BLOCK_NAMES[int(b)][int(m)]}.{rest}"


def named_tensors(model):
    return {pth_name(k): v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def features(model, images, size):
    """pytorch-fid's InceptionV3.forward with size=(299, 299) replaced by `size`."""
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    return model(x)[0].flatten(1)


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def uniform(key, n):
    """n values in [-1, 1) from splitmix64 of key + i·golden (i = 1..n): the top 24 bits, so
    exact in f32. tests/inception.rs has the same function."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / 2.0**24 * 2.0 - 1.0).astype(np.float32)


def conv_weight(name, shape, seed):
    fan_in = int(np.prod(shape[1:]))
    bound = np.float32(math.sqrt(CONV_FAN_GAIN / fan_in))
    return (uniform(fnv1a(name) ^ seed, int(np.prod(shape))) * bound).reshape(shape)


def random_fixture(path):
    torch.manual_seed(SEED)
    model = build().double()
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    for key, t in params.items():
        name = pth_name(key)
        if name.endswith("conv.weight"):
            t.data = torch.from_numpy(conv_weight(name, tuple(t.shape), SEED)).double()
        elif name.endswith("bn.weight"):
            t.data = (1.0 + 0.2 * (2 * torch.rand(t.shape, dtype=torch.float64) - 1)).float().double()
        elif name.endswith("bn.bias"):
            t.data = (0.2 * (2 * torch.rand(t.shape, dtype=torch.float64) - 1)).float().double()
    # Running statistics from a calibration batch: train mode with a cumulative average takes
    # each layer's batch mean and (unbiased) variance as its running statistics.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        features(model, torch.rand(4, 3, 47, 53, dtype=torch.float64), RESIZE)
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.data = m.running_mean.float().double()
            m.running_var.data = m.running_var.float().double()
    images = torch.rand(2, 3, 40, 37, dtype=torch.float32)
    gray = torch.rand(1, 1, 28, 28, dtype=torch.float32)
    with torch.no_grad():
        f = features(model, images.double(), RESIZE)
        # kiln repeats a grey image to 3 channels (what pytorch-fid's RGB conversion does).
        fg = features(model, gray.double().repeat(1, 3, 1, 1), RESIZE)
    out = {"images": images, "features": f.float(), "gray_image": gray, "gray_features": fg.float()}
    for name, t in named_tensors(model).items():
        if ".bn." in name:
            out[name] = t.float().contiguous()
    # F.interpolate itself on odd sizes, up and down, for the resize op alone.
    for i, (shape, size) in enumerate([((2, 3, 13, 17), (29, 7)), ((1, 1, 28, 28), (299, 299)), ((1, 2, 300, 7), (299, 11))]):
        x = torch.rand(shape, dtype=torch.float32)
        out[f"resize/{i}/x"] = x
        out[f"resize/{i}/y"] = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    meta = {"seed": str(SEED), "resize": str(RESIZE), "conv_fan_gain": str(CONV_FAN_GAIN)}
    save_file(out, path, metadata=meta)
    size = sum(t.numel() * 4 for t in out.values())
    print(f"wrote {path}: {len(out)} tensors, {size / 1e6:.2f} MB; features range {f.min():.4f}..{f.max():.4f}, mean {f.mean():.4f}")


def load_pth(path):
    sd = torch.load(path, map_location="cpu")
    return {k: v for k, v in sd.items()}


def convert(pth, path):
    sd = load_pth(pth)
    model = build(sd)  # checks every key and shape as pytorch-fid loads it
    out = {k: v.float().contiguous() for k, v in named_tensors(model).items()}
    missing = [k for k in out if k not in sd]
    if missing:
        sys.exit(f"{pth}: lacks {missing[:5]}")
    save_file(out, path, metadata={"source": pth.split("/")[-1], "network": "pytorch-fid InceptionV3 pool3"})
    dropped = sorted(k for k in sd if k not in out)
    kinds = sorted({k.split(".")[-1] if "num_batches" in k else k for k in dropped})
    print(f"wrote {path}: {len(out)} tensors, {sum(v.numel() for v in out.values())} values; dropped {len(dropped)} unused: {kinds}")


def reference(pth, path):
    model = build(load_pth(pth)).double()
    torch.manual_seed(SEED)
    images = torch.rand(2, 3, 32, 32, dtype=torch.float32)
    with torch.no_grad():
        f = features(model, images.double(), 299)
    save_file({"images": images, "features": f.float()}, path, metadata={"resize": "299"})
    print(f"wrote {path}: features of 2 images at 299, range {f.min():.4f}..{f.max():.4f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--random":
        random_fixture(args[1])
    elif len(args) == 3 and args[0] == "convert":
        convert(args[1], args[2])
    elif len(args) == 3 and args[0] == "reference":
        reference(args[1], args[2])
    else:
        sys.exit(__doc__)
