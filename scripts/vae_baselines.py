"""PyTorch reference numbers for kiln's VAEs on MNIST: test loss in nats per image
(BCE(sum) + KL over the t10k set, divided by its size, as PyTorch's VAE example reports it)
after N epochs at batch 128 with Adam 1e-3.

    python scripts/vae_baselines.py --mnist ../shared/data/mnist [--epochs 10] [--models mlp conv]

The architectures mirror src/models/vae.rs, so the numbers are what kiln should reproduce.
"""
import argparse, gzip, os, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(folder, stem):
    for name in os.listdir(folder):
        if name.startswith(stem):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder}: no {stem}*")


class Mlp(nn.Module):
    def __init__(self, hidden=400, latent=20):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


class Deep(nn.Module):
    """An MLP with two hidden layers each way: 784-h1-h2-latent and back."""

    def __init__(self, h1=512, h2=256, latent=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.fc_mu, self.fc_logvar = nn.Linear(h2, latent), nn.Linear(h2, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(), nn.Linear(h1, 784), nn.Sigmoid())

    def forward(self, x):
        h = self.encoder(x.view(-1, 784))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


class Conv(nn.Module):
    """src/models/vae.rs Kind::Conv: two stride-2 4x4 convs, an FC bottleneck, and the mirror."""

    def __init__(self, hidden=400, latent=20, width=32):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(nn.Conv2d(1, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(2 * w * 49, hidden), nn.ReLU())
        self.fc_mu, self.fc_logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 2 * w * 49), nn.ReLU(),
                                     nn.Unflatten(1, (2 * w, 7, 7)), nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(w, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, x):
        h = self.encoder(x.view(-1, 1, 28, 28))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z).view(-1, 784), mu, logvar


def loss_fn(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


MODELS = {
    "mlp": lambda: Mlp(),
    "mlp-512-l32": lambda: Mlp(512, 32),
    "deep-512-256-l32": lambda: Deep(),
    "deep-1024-512-l32": lambda: Deep(1024, 512, 32),
    "conv": lambda: Conv(),
    "conv-l32": lambda: Conv(latent=32),
    "conv-h512-l32": lambda: Conv(hidden=512, latent=32),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", nargs="+", default=["mlp", "conv"])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    train = torch.tensor(idx(find(args.mnist, "train-images")), dtype=torch.float32) / 255
    test = torch.tensor(idx(find(args.mnist, "t10k-images")), dtype=torch.float32) / 255
    for name in args.models:
        torch.manual_seed(args.seed)
        model = MODELS[name]()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        began = time.time()
        for epoch in range(1, args.epochs + 1):
            model.train()
            for batch in torch.randperm(len(train)).split(args.batch):
                x = train[batch]
                recon, mu, logvar = model(x)
                loss = loss_fn(recon, x, mu, logvar)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                total = 0.0
                for x in test.split(args.batch):
                    recon, mu, logvar = model(x)
                    total += loss_fn(recon, x, mu, logvar).item()
            print(f"{name} epoch {epoch} test {total / len(test):.2f} nats/image ({time.time() - began:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
