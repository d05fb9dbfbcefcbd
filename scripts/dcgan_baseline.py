"""PyTorch reference run of kiln's default DCGAN (the TensorFlow tutorial's networks with the
DCGAN paper's recipe: N(0, 0.02) init, BN gamma N(1, 0.02), Adam 2e-4 beta1 0.5, BCE with
logits, non-saturating G loss) on MNIST, to compare losses and samples step for step with
`kiln train gan --data DIR`. Writes a 8x8 grid PNG of G(z) every --sample-every steps.

    python scripts/dcgan_baseline.py --mnist ../shared/data/mnist --steps 400 --batch 32 --out out/torch_gan
"""
import argparse, os, struct, zlib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from vae_baselines import idx, find


def generator():
    return nn.Sequential(nn.Linear(100, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256), nn.LeakyReLU(0.3), nn.Unflatten(1, (256, 7, 7)),
                         nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.3),
                         nn.ConvTranspose2d(128, 64, 5, 2, 2, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.3),
                         nn.ConvTranspose2d(64, 1, 5, 2, 2, 1, bias=False), nn.Tanh())


def discriminator():
    return nn.Sequential(nn.Conv2d(1, 64, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3), nn.Conv2d(64, 128, 5, 2, 2), nn.LeakyReLU(0.3),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(128 * 7 * 7, 1))


def paper_init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def save_png(images, path):
    """images: [64, 28, 28] in [0, 1] -> an 8x8 grid with 2-pixel borders, 8-bit gray."""
    n, h, w = 8, 28, 28
    grid = np.zeros((n * (h + 2) + 2, n * (w + 2) + 2), np.uint8)
    for i, img in enumerate(images[:64]):
        r, c = divmod(i, n)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = (img * 255).round().clip(0, 255)
    raw = b"".join(b"\0" + row.tobytes() for row in grid)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", grid.shape[1], grid.shape[0], 8, 0, 0, 0, 0))
    open(path, "wb").write(png + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sample-every", type=int, default=100)
    ap.add_argument("--out", default="out/torch_gan")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    data = torch.tensor(idx(find(args.mnist, "train-images")), dtype=torch.float32).unsqueeze(1) / 127.5 - 1
    g, d = generator(), discriminator()
    g.apply(paper_init)
    d.apply(paper_init)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    fixed = torch.randn(64, 100)
    order = torch.randperm(len(data))
    for step in range(1, args.steps + 1):
        real = data[order[(step - 1) * args.batch:step * args.batch]]
        fake = g(torch.randn(args.batch, 100))
        real_logit, fake_logit = d(real), d(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) + \
            F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        fake_logit = d(fake)
        g_loss = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        if step % 10 == 0 or step == 1:
            print(f"step {step} d_loss {d_loss.item():.4f} g_loss {g_loss.item():.4f} d_real {real_logit.mean().item():.4f} d_fake {fake_logit.mean().item():.4f}", flush=True)
        if step % args.sample_every == 0:
            # Batch statistics, as kiln's training samples use (early running stats lag behind).
            with torch.no_grad():
                save_png(((g(fixed) + 1) / 2).squeeze(1).numpy(), os.path.join(args.out, f"step_{step:07}.png"))


if __name__ == "__main__":
    main()
