"""Writes fixtures/torch_state_dict.safetensors: a small PyTorch nn.Sequential's state_dict
(conv, batch norm with non-trivial running statistics, linear) saved with safetensors, plus an
input batch and the model's eval-mode output, so a test can load the weights into kiln by name
and compare outputs. Run: pip install torch safetensors && python3 scripts/torch_state_dict.py
"""
import torch
from safetensors.torch import save_file

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(2, 4, 3, stride=2, padding=1),
    torch.nn.BatchNorm2d(4),
    torch.nn.LeakyReLU(0.2),
    torch.nn.Flatten(),
    torch.nn.Linear(4 * 3 * 3, 5),
    torch.nn.Tanh(),
)
# A few training-mode passes so the running statistics are not the defaults.
model.train()
with torch.no_grad():
    for _ in range(3):
        model(torch.randn(8, 2, 5, 5) * 2 + 0.5)
model.eval()
x = torch.randn(3, 2, 5, 5)
with torch.no_grad():
    y = model(x)
tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
tensors["test.input"] = x
tensors["test.output"] = y
save_file(tensors, "fixtures/torch_state_dict.safetensors", metadata={"source": "scripts/torch_state_dict.py"})
print({k: tuple(v.shape) for k, v in tensors.items()})
