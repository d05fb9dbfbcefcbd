"""Writes fixtures/augment.safetensors: DiffAugment outputs and input gradients from PyTorch,
for tests/kernels/augment.rs to compare kiln against (<= 1e-5).

The augmentations are DiffAugment_pytorch.py's (Zhao et al. 2020, mit-han-lab/data-efficient-
gans) line for line, except that each torch.rand / torch.randint draw is read from a fixed
[N, 7] tensor of uniforms, the one kiln's ops take as their input:
  columns 0-2: brightness, saturation, contrast (used as torch.rand's values);
  columns 3-4: translation along H and W, randint(-s, s + 1) = floor(u * (2s + 1)) - s;
  columns 5-6: cutout offset along H and W, randint(0, m) = floor(u * m);
with floor(u * m) computed in float32 and capped at m - 1. The image arithmetic runs in float64
on float32 inputs, so the fixture is the exact answer kiln's f32 kernels approximate.

Per case: <case>/x, <case>/draws, <case>/dy, and per policy string <case>/<policy>/y (the
augmented x), <case>/<policy>/dx (the gradient of sum(y * dy) with respect to x) and
<case>/<policy>/jjt_dy (the gradient of 0.5 * |dx|^2 with respect to dy, through dx's graph:
create_graph=True, the second-order path R1 on augmented reals takes).
Run: pip install torch safetensors && python3 scripts/augment_fixtures.py
"""
import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def pick(u, m):
    return torch.clamp(torch.floor(u.float() * m), 0, m - 1).long()


def rand_brightness(x, r):
    x = x + (r[:, 0].view(-1, 1, 1, 1) - 0.5)
    return x


def rand_saturation(x, r):
    x_mean = x.mean(dim=1, keepdim=True)
    x = (x - x_mean) * (r[:, 1].view(-1, 1, 1, 1) * 2) + x_mean
    return x


def rand_contrast(x, r):
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - x_mean) * (r[:, 2].view(-1, 1, 1, 1) + 0.5) + x_mean
    return x


def rand_translation(x, r, ratio=0.125):
    shift_x, shift_y = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    translation_x = (pick(r[:, 3], 2 * shift_x + 1) - shift_x).view(-1, 1, 1)
    translation_y = (pick(r[:, 4], 2 * shift_y + 1) - shift_y).view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long),
        torch.arange(x.size(2), dtype=torch.long),
        torch.arange(x.size(3), dtype=torch.long),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    x = x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)
    return x


def rand_cutout(x, r, ratio=0.5):
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    offset_x = pick(r[:, 5], x.size(2) + (1 - cutout_size[0] % 2)).view(-1, 1, 1)
    offset_y = pick(r[:, 6], x.size(3) + (1 - cutout_size[1] % 2)).view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long),
        torch.arange(cutout_size[0], dtype=torch.long),
        torch.arange(cutout_size[1], dtype=torch.long),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    x = x * mask.unsqueeze(1)
    return x


AUGMENT_FNS = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


def diff_augment(x, r, policy):
    for p in policy.split(","):
        for f in AUGMENT_FNS[p]:
            x = f(x, r)
    return x.contiguous()


POLICIES = ["color", "translation", "cutout", "color,translation,cutout"]
# Batch 1 and odd sizes, MNIST's shape, a non-square RGB image (different shifts per axis).
CASES = {"odd": (2, 3, 13, 11), "mnist": (3, 1, 28, 28), "wide": (1, 3, 9, 16)}

gen = torch.Generator().manual_seed(20261201)
out = {}
for case, shape in CASES.items():
    n = shape[0]
    x32 = torch.rand(shape, generator=gen) * 2 - 1
    dy32 = torch.rand(shape, generator=gen) * 2 - 1
    draws = torch.rand((n, 7), generator=gen)
    # The draws' extremes: the first and last integer of every range.
    draws[0, 3:] = 0.0
    if n > 1:
        draws[1, 3:] = 1.0 - 2.0**-24
    out[f"{case}/x"], out[f"{case}/dy"], out[f"{case}/draws"] = x32, dy32, draws
    r = draws.double()
    for policy in POLICIES:
        x = x32.double().requires_grad_()
        dy = dy32.double().requires_grad_()
        y = diff_augment(x, r, policy)
        (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
        (jjt_dy,) = torch.autograd.grad(0.5 * (dx * dx).sum(), dy)
        out[f"{case}/{policy}/y"] = y.detach().float()
        out[f"{case}/{policy}/dx"] = dx.detach().float()
        out[f"{case}/{policy}/jjt_dy"] = jjt_dy.float()

save_file({k: v.contiguous() for k, v in out.items()}, "fixtures/augment.safetensors")
print(f"fixtures/augment.safetensors: {len(out)} tensors")
