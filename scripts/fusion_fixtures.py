"""Writes fixtures/fusion.safetensors: a producer followed by an activation, forward and
backward, computed by PyTorch in float64, for tests/fusion.rs to compare kiln's fused pairs
(the activation applied in the tile engine's epilogue, relu and leaky_relu differentiated
from their output) against an oracle that is not kiln's own reference.

Cases (`<case>` below), each with bias:
- `conv`: F.conv2d, x [1, 3, 9, 7], weight [5, 3, 3, 3], stride 2, padding 1 (batch 1, odd sizes);
- `convt`: F.conv_transpose2d, x [2, 5, 4, 3], weight [5, 3, 4, 4], stride 2, padding 1;
- `linear`: F.linear, x [5, 33], weight [129, 33].

Tensors (float32 on disk):
- `<case>.x`, `<case>.weight`, `<case>.bias`, `<case>.r`: inputs, and the weights r of the loss
  L = sum(act(producer(x)) * r);
- `<case>.<act>.y`, `<case>.<act>.grad.x`, `.grad.weight`, `.grad.bias`: y and dL/d input,
  for act in relu, leaky_relu (negative_slope 0.2), tanh, sigmoid;
- `zeros.x` [8] (0, −0, ±values, ±3e-38), `zeros.r`, `zeros.<act>.grad.x` for relu and
  leaky_relu: PyTorch's gradient at exactly 0 (threshold_backward and leaky_relu_backward).

Run: pip install torch safetensors && python3 scripts/fusion_fixtures.py
"""
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(20261202)

ACTS = {
    "relu": F.relu,
    "leaky_relu": lambda v: F.leaky_relu(v, 0.2),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def f32(t):
    """Rounded to float32 first, so kiln starts from the same values."""
    return t.float().double()


def case(name, producer, x_shape, w_shape, channels, fan_in, out):
    x = f32(torch.rand(x_shape) * 2 - 1)
    w = f32((torch.rand(w_shape) * 2 - 1) * 1.5 / fan_in ** 0.5)
    b = f32((torch.rand(channels) * 2 - 1) * 0.5)
    y_shape = producer(x, w, b).shape
    r = f32(torch.rand(y_shape) * 2 - 1)
    out[f"{name}.x"], out[f"{name}.weight"], out[f"{name}.bias"], out[f"{name}.r"] = x, w, b, r
    for act_name, act in ACTS.items():
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = act(producer(xs, ws, bs))
        (y * r).sum().backward()
        out[f"{name}.{act_name}.y"] = y.detach()
        for what, t in (("x", xs), ("weight", ws), ("bias", bs)):
            out[f"{name}.{act_name}.grad.{what}"] = t.grad


out = {}
case("conv", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [1, 3, 9, 7], [5, 3, 3, 3], 5, 27, out)
case("convt", lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1), [2, 5, 4, 3], [5, 3, 4, 4], 3, 80, out)
case("linear", lambda x, w, b: F.linear(x, w, b), [5, 33], [129, 33], 129, 33, out)

zeros = torch.tensor([0.0, -0.0, 1.5, -2.0, 0.0, 3e-38, -3e-38, 0.25], dtype=torch.float64)
r = f32(torch.rand(8) * 2 - 1)
out["zeros.x"], out["zeros.r"] = zeros, r
for act_name in ("relu", "leaky_relu"):
    xs = zeros.clone().requires_grad_(True)
    (ACTS[act_name](xs) * r).sum().backward()
    out[f"zeros.{act_name}.grad.x"] = xs.grad

save_file({k: v.float().contiguous() for k, v in out.items()}, "fixtures/fusion.safetensors")
print(f"wrote fixtures/fusion.safetensors: {len(out)} tensors")
