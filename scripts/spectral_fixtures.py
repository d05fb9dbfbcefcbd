"""Writes fixtures/spectral.safetensors: PyTorch's spectral norm
(torch.nn.utils.parametrizations.spectral_norm) on a Linear, a Conv2d and a ConvTranspose2d
(dim 1), each the only layer of an nn.Sequential in a ModuleDict, so the state_dict names are
kiln's (`conv.0.parametrizations.weight.original`, `conv.0.parametrizations.weight.0._u`, ...).

Each module's original weight, bias, _u and _v are set to fixed random values and saved as the
state before the step. Then one training-mode forward (one power iteration) of the loss
sum(module(x) * c) and its backward; saved under `test.{layer}.*`: the input x and weights c,
the normalized weight W / σ the forward used, _u and _v after the iteration, and the gradient
of the loss with respect to the original weight and the bias.

Run: pip install torch safetensors && python3 scripts/spectral_fixtures.py
"""
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm
from safetensors.torch import save_file

torch.manual_seed(0)
torch.set_default_dtype(torch.float32)

layers = {
    "linear": (torch.nn.Linear(7, 5), (3, 7)),
    "conv": (torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 6, 5)),
    "convt": (torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1), (2, 3, 3, 4)),
}
model = torch.nn.ModuleDict({name: torch.nn.Sequential(spectral_norm(layer)) for name, (layer, _) in layers.items()})
with torch.no_grad():
    for name, (layer, _) in layers.items():
        sn = layer.parametrizations.weight[0]
        layer.parametrizations.weight.original.copy_(torch.randn_like(layer.parametrizations.weight.original) * 0.5)
        layer.bias.copy_(torch.randn_like(layer.bias) * 0.1)
        # Arbitrary unit vectors, not the ones registration left: the step's iteration has
        # something to do.
        sn._u.copy_(torch.nn.functional.normalize(torch.randn_like(sn._u), dim=0))
        sn._v.copy_(torch.nn.functional.normalize(torch.randn_like(sn._v), dim=0))

tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
model.train()
for name, (layer, x_shape) in layers.items():
    x = torch.randn(x_shape)
    # One evaluation of the parametrization: the weight the forward uses is the one recorded.
    with parametrize.cached():
        w_sn = layer.weight
        y = model[name](x)
    c = torch.randn_like(y)
    loss = (y * c).sum()
    loss.backward()
    sn = layer.parametrizations.weight[0]
    tensors[f"test.{name}.input"] = x
    tensors[f"test.{name}.c"] = c
    tensors[f"test.{name}.weight_sn"] = w_sn.detach().clone()
    tensors[f"test.{name}.u"] = sn._u.clone()
    tensors[f"test.{name}.v"] = sn._v.clone()
    tensors[f"test.{name}.grad_original"] = layer.parametrizations.weight.original.grad.clone()
    tensors[f"test.{name}.grad_bias"] = layer.bias.grad.clone()

tensors = {k: v.contiguous() for k, v in tensors.items()}
save_file(tensors, "fixtures/spectral.safetensors", metadata={"source": "scripts/spectral_fixtures.py"})
print({k: tuple(v.shape) for k, v in tensors.items()})
