"""Writes fixtures/second_order.safetensors: R1's and WGAN-GP's parameter gradients of a small
discriminator, computed by PyTorch with autograd.grad(..., create_graph=True), for
tests/second_order.rs to compare kiln's double backward against.

D = nn.Sequential(Conv2d(1, 3, 5, 2, 2), LeakyReLU(0.3), Conv2d(3, 4, 3, 2, 1), LeakyReLU(0.3),
Flatten(), Linear(36, 1)) on 3 images of 1×12×12 (12 → 6 → 3), float64.

Tensors (float32 on disk):
- `0.weight` … `5.bias`: D's parameters under nn.Sequential's names (PyTorch's default init,
  seed 20261201);
- `real`, `fake` [3, 1, 12, 12]; `eps` [3]: the interpolation weights of the penalty;
- `r1`, `gp`: the penalties, shape [1];
- `r1.grad.<param>`, `gp.grad.<param>`: d penalty / d param (zero for `5.bias`, which the
  input gradient does not depend on).

R1 = mean_i ‖∇ₓ D(x)_i‖² at the real images (no γ/2); GP = mean_i (sqrt(‖∇ D(x̂)_i‖² + 1e-12) − 1)²
at x̂ = eps·real + (1 − eps)·fake, the eps inside the square root as kiln's NORM_EPS.
Run: pip install torch safetensors && python3 scripts/second_order_fixtures.py
"""
import torch
from torch import nn
from safetensors.torch import save_file

torch.manual_seed(20261201)
d = nn.Sequential(
    nn.Conv2d(1, 3, 5, 2, 2), nn.LeakyReLU(0.3),
    nn.Conv2d(3, 4, 3, 2, 1), nn.LeakyReLU(0.3),
    nn.Flatten(), nn.Linear(36, 1),
).double()
# Round the parameters and inputs to float32 first, so kiln starts from the same values.
with torch.no_grad():
    for p in d.parameters():
        p.copy_(p.float().double())
real = torch.randn(3, 1, 12, 12).float().double()
fake = torch.randn(3, 1, 12, 12).float().double()
eps = torch.rand(3).float().double()


def squared_norms(x):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1)


def param_grads(penalty):
    return dict(zip((n for n, _ in d.named_parameters()), torch.autograd.grad(penalty, list(d.parameters()), allow_unused=True, materialize_grads=True)))


out = {n: p.detach() for n, p in d.named_parameters()}
out.update(real=real, fake=fake, eps=eps)

r1 = squared_norms(real).mean()
mixed = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
gp = ((squared_norms(mixed) + 1e-12).sqrt() - 1).pow(2).mean()
for name, penalty in [("r1", r1), ("gp", gp)]:
    out[name] = penalty.detach().reshape(1)
    for p, g in param_grads(penalty).items():
        out[f"{name}.grad.{p}"] = g

save_file({k: v.float().contiguous() for k, v in out.items()}, "fixtures/second_order.safetensors")
print({k: tuple(v.shape) for k, v in out.items()}, "r1", r1.item(), "gp", gp.item())
