#!/usr/bin/env python3
"""Build kiln's conformance cases from PyTorch (format: docs/CHECK.md).

    pip install torch numpy safetensors
    python3 scripts/torch_cases.py            # writes fixtures/torch_cases.safetensors
    kiln check fixtures/torch_cases.safetensors

Inputs are drawn in float32 (what kiln receives); the expected outputs and gradients are
computed by torch.autograd in float64 from those same values, so they are the f64 truth
rounded once to f32. Fixed seed: the same torch version writes the same bytes.
"""

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

SEED = 1234
# 2.5 MB of it is linear_70001_rows and matmul_70001_k: a reduction past 65,535 values needs them.
MAX_BYTES = 5_000_000


class Cases:
    def __init__(self):
        self.meta = []
        self.tensors = {}
        self.gen = torch.Generator().manual_seed(SEED)

    # Random inputs, rounded to f32 first: the f64 truth must see exactly what kiln gets.
    def randn(self, *shape, scale=1.0):
        return (torch.randn(tuple(shape), generator=self.gen, dtype=torch.float64) * scale).float().double()

    def uniform(self, *shape, lo=0.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(tuple(shape), generator=self.gen, dtype=torch.float64)).float().double()

    def add(self, name, op, inputs, fn, attrs=None, grads=(), outputs=("y",), no_grad_outputs=(), tol=None):
        """inputs: [(name, f64 tensor)] in positional order. fn(*tensors) -> tensor or tuple
        of tensors in the order of `outputs`. Outputs in no_grad_outputs get no upstream
        gradient (batch_norm's running statistics)."""
        assert name not in {c["name"] for c in self.meta}, name
        assert "/" not in name
        leaves = []
        for n, t in inputs:
            leaf = t.detach().clone().requires_grad_(n in grads)
            leaves.append(leaf)
            self.tensors[f"{name}/in/{n}"] = t.float()
        result = fn(*leaves)
        result = result if isinstance(result, tuple) else (result,)
        assert len(result) == len(outputs), (name, len(result))
        diff_outs, grad_outs = [], []
        for o, y in zip(outputs, result):
            self.tensors[f"{name}/out/{o}"] = y.detach().float()
            if grads and o not in no_grad_outputs:
                g = self.randn(*y.shape)
                self.tensors[f"{name}/grad_out/{o}"] = g.float()
                diff_outs.append(y)
                grad_outs.append(g)
        if grads:
            wrt = [leaf for (n, _), leaf in zip(inputs, leaves) if n in grads]
            got = torch.autograd.grad(diff_outs, wrt, grad_outs)
            for n, g in zip([n for n, _ in inputs if n in grads], got):
                self.tensors[f"{name}/grad_in/{n}"] = g.float()
        case = {"name": name, "op": op, "attrs": attrs or {}, "inputs": [n for n, _ in inputs],
                "outputs": list(outputs), "grads": [n for n, _ in inputs if n in grads]}
        if tol is not None:
            case["tol"] = tol
        self.meta.append(case)

    def functional(self, name, op, inputs, attrs=None, grads=()):
        """A case whose op is torch.nn.functional.<op>(*inputs, **attrs) (torch.matmul for matmul)."""
        attrs = attrs or {}
        call = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}
        f = getattr(F, op, None) or getattr(torch, op)
        self.add(name, op, inputs, lambda *xs: f(*xs, **call), attrs, grads)

    def save(self, path):
        for k, t in self.tensors.items():
            assert t.dtype == torch.float32 and torch.isfinite(t).all(), k
        tensors = {k: t.contiguous() for k, t in self.tensors.items()}
        save_file(tensors, path, metadata={"kiln.cases": json.dumps(self.meta, separators=(",", ":"))})


def matmul(c):
    for name, m, k, n in [("matmul_square", 8, 8, 8), ("matmul_odd", 7, 13, 5), ("matmul_tile_edges", 65, 33, 67),
                          ("matmul_long_k", 8, 300, 12), ("matmul_one_row", 1, 37, 19), ("matmul_outer", 9, 1, 11),
                          ("matmul_one_col", 23, 17, 1)]:
        c.functional(name, "matmul", [("input", c.randn(m, k)), ("other", c.randn(k, n))], grads=("input", "other"))
    # A transposed operand as PyTorch code writes it (x @ w.T): the file holds the product's
    # operands as they are, so a GEMM with transpose flags must agree with plain shapes.
    w = c.randn(6, 10)
    c.functional("matmul_transposed_operand", "matmul", [("input", c.randn(4, 10)), ("other", w.t().contiguous())],
                 grads=("input", "other"))


def linear(c):
    for name, n, i, o, bias in [("linear_bias", 4, 10, 6, True), ("linear_no_bias", 4, 10, 6, False),
                                ("linear_batch1", 1, 33, 17, True), ("linear_odd", 7, 29, 3, True),
                                ("linear_vae_decoder", 3, 20, 200, True), ("linear_wide_in", 2, 784, 8, False)]:
        inputs = [("input", c.randn(n, i)), ("weight", c.randn(o, i, scale=1 / math.sqrt(i)))]
        if bias:
            inputs.append(("bias", c.randn(o)))
        c.functional(name, "linear", inputs, grads=[n for n, _ in inputs])


def conv2d(c):
    cases = [  # name, N, Cin, H, W, Cout, kh, kw, attrs, bias
        ("conv2d_defaults", 2, 3, 8, 8, 4, 3, 3, {}, True),
        ("conv2d_pad1", 2, 3, 8, 8, 4, 3, 3, {"padding": 1}, True),
        ("conv2d_stride2_int", 2, 3, 9, 9, 5, 3, 3, {"stride": 2, "padding": 1}, True),
        ("conv2d_stride_pair", 1, 2, 11, 9, 3, 3, 2, {"stride": [2, 1], "padding": [1, 0]}, True),
        ("conv2d_odd_no_bias", 3, 5, 7, 13, 6, 3, 5, {"stride": [1, 3], "padding": [2, 1]}, False),
        ("conv2d_batch1_1x1", 1, 7, 5, 5, 3, 1, 1, {}, True),
        ("conv2d_big_padding", 1, 2, 4, 5, 2, 3, 3, {"padding": 2}, True),
        ("conv2d_dcgan_mnist_d1", 1, 1, 28, 28, 16, 5, 5, {"stride": 2, "padding": 2}, True),
        ("conv2d_dcgan_d2", 1, 16, 14, 14, 16, 5, 5, {"stride": 2, "padding": 2}, True),
        ("conv2d_dcgan_k4s2p1", 1, 8, 16, 16, 16, 4, 4, {"stride": 2, "padding": 1}, False),
    ]
    for name, n, cin, h, w, cout, kh, kw, attrs, bias in cases:
        fan_in = cin * kh * kw
        inputs = [("input", c.randn(n, cin, h, w)), ("weight", c.randn(cout, cin, kh, kw, scale=1 / math.sqrt(fan_in)))]
        if bias:
            inputs.append(("bias", c.randn(cout)))
        c.functional(name, "conv2d", inputs, attrs, grads=[n for n, _ in inputs])


def conv_transpose2d(c):
    cases = [  # name, N, Cin, H, W, Cout, kh, kw, attrs, bias
        ("conv_transpose2d_defaults", 2, 3, 5, 5, 4, 3, 3, {}, True),
        ("conv_transpose2d_stride2", 2, 4, 5, 6, 3, 3, 3, {"stride": 2, "padding": 1}, True),
        ("conv_transpose2d_output_padding", 1, 3, 4, 5, 2, 3, 3, {"stride": 2, "padding": 1, "output_padding": 1}, True),
        ("conv_transpose2d_pairs", 2, 2, 5, 4, 3, 3, 4,
         {"stride": [2, 3], "padding": [1, 2], "output_padding": [1, 2]}, False),
        ("conv_transpose2d_batch1_odd", 1, 5, 7, 3, 3, 2, 3, {"stride": [3, 1], "padding": [0, 1]}, True),
        ("conv_transpose2d_dcgan_5x5_op1", 1, 16, 7, 7, 8, 5, 5, {"stride": 2, "padding": 2, "output_padding": 1}, True),
        # The DCGAN generator's 128 -> 64 channel step, 7x7 -> 14x14 (kernel 4, stride 2, padding 1).
        ("conv_transpose2d_dcgan_128_64", 1, 128, 7, 7, 64, 4, 4, {"stride": 2, "padding": 1}, False),
        ("conv_transpose2d_dcgan_to_image", 2, 8, 14, 14, 1, 4, 4, {"stride": 2, "padding": 1}, True),
    ]
    for name, n, cin, h, w, cout, kh, kw, attrs, bias in cases:
        fan_in = cin * kh * kw
        inputs = [("input", c.randn(n, cin, h, w)), ("weight", c.randn(cin, cout, kh, kw, scale=1 / math.sqrt(fan_in)))]
        if bias:
            inputs.append(("bias", c.randn(cout)))
        c.functional(name, "conv_transpose2d", inputs, attrs, grads=[n for n, _ in inputs])


def batch_norm_case(c, name, shape, training, affine, attrs, running=True):
    """A batch_norm case with inputs named as PyTorch's parameters. Without running statistics
    (training only) it calls F.batch_norm(input, None, None, weight, bias, training=True), as
    PyTorch code does, and outputs only y."""
    ch = shape[1]
    # Offset and scaled inputs so the batch statistics are far from 0 and 1.
    x = c.randn(*shape, scale=2.0) + 0.5
    inputs = [("input", x)]
    if running:
        inputs += [("running_mean", c.randn(ch, scale=0.5)), ("running_var", c.uniform(ch, lo=0.5, hi=2.0))]
    if affine:
        inputs += [("weight", c.uniform(ch, lo=0.5, hi=1.5)), ("bias", c.randn(ch))]
    attrs = dict(attrs, training=training)
    kw = {k: v for k, v in attrs.items() if k != "training"}
    names = [n for n, _ in inputs]
    updates = training and running

    def fn(*tensors):
        t = dict(zip(names, tensors))
        # Copies: F.batch_norm updates the running statistics in place when training.
        rm, rv = (t[k].detach().clone() if running else None for k in ("running_mean", "running_var"))
        y = F.batch_norm(t["input"], rm, rv, t.get("weight"), t.get("bias"), training=training, **kw)
        return (y, rm, rv) if updates else y

    outputs = ("y", "running_mean", "running_var") if updates else ("y",)
    grads = ["input"] + (["weight", "bias"] if affine else [])
    c.add(name, "batch_norm", inputs, fn, attrs, grads, outputs, no_grad_outputs=("running_mean", "running_var"))


def batch_norm(c):
    cases = [  # name, shape, training, affine, attrs
        ("batch_norm1d_train", (8, 5), True, True, {"momentum": 0.1, "eps": 1e-5}),
        ("batch_norm1d_train_momentum", (3, 7), True, True, {"momentum": 0.3, "eps": 1e-3}),
        ("batch_norm1d_train_no_affine", (6, 4), True, False, {"momentum": 0.1, "eps": 1e-5}),
        ("batch_norm1d_eval", (5, 6), False, True, {"eps": 1e-5}),
        ("batch_norm2d_train", (4, 3, 5, 7), True, True, {"momentum": 0.1, "eps": 1e-5}),
        ("batch_norm2d_train_batch1", (1, 4, 6, 5), True, True, {"momentum": 0.2, "eps": 1e-5}),
        ("batch_norm2d_train_dcgan", (2, 8, 14, 14), True, True, {"momentum": 0.1, "eps": 1e-5}),
        ("batch_norm2d_eval", (2, 3, 4, 5), False, True, {"eps": 1e-5}),
        ("batch_norm2d_eval_no_affine", (3, 2, 3, 3), False, False, {"eps": 1e-4}),
    ]
    for name, shape, training, affine, attrs in cases:
        batch_norm_case(c, name, shape, training, affine, attrs)


def activations(c):
    def with_extremes(*shape):
        x = c.randn(*shape, scale=3.0).flatten()
        extremes = torch.tensor([-1e4, -100.0, -50.0, -30.0, -16.0, 16.0, 30.0, 50.0, 100.0, 1e4], dtype=torch.float64)
        x[: len(extremes)] = extremes
        return x.reshape(shape)

    for op, attrs in [("relu", {}), ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.2}), ("tanh", {}), ("sigmoid", {})]:
        tag = op if not attrs else f"{op}_slope0.2"
        c.functional(f"{tag}_odd", op, [("input", c.randn(3, 5, 7))], attrs, grads=("input",))
        c.functional(f"{tag}_large_abs", op, [("input", with_extremes(4, 33))], attrs, grads=("input",))
        c.functional(f"{tag}_nchw", op, [("input", c.randn(1, 8, 7, 7))], attrs, grads=("input",))
    # PyTorch's gradient at exactly 0: relu passes 0, leaky_relu passes negative_slope.
    zeros_and_more = torch.tensor([0.0, 0.0, -1.0, 1.0, 0.0, 2.5, -0.5], dtype=torch.float64)
    c.functional("relu_grad_at_zero", "relu", [("input", zeros_and_more)], grads=("input",))
    c.functional("leaky_relu_grad_at_zero", "leaky_relu", [("input", zeros_and_more)], {"negative_slope": 0.2},
                 grads=("input",))


def losses(c):
    for reduction in ["mean", "sum", "none"]:
        # Logits far past where exp overflows a naive f32 formula, hard and soft targets.
        big = torch.tensor([-120.0, -80.0, -60.0, -51.0, 51.0, 60.0, 80.0, 120.0], dtype=torch.float64)
        logits = torch.cat([big, c.randn(24, scale=3.0)]).reshape(4, 8)
        target = torch.cat([torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.3, 1.0], dtype=torch.float64),
                            c.uniform(24).round(), ]).reshape(4, 8)
        c.functional(f"bce_with_logits_large_{reduction}", "binary_cross_entropy_with_logits",
                     [("input", logits), ("target", target)], {"reduction": reduction}, grads=("input",))
        c.functional(f"bce_with_logits_soft_{reduction}", "binary_cross_entropy_with_logits",
                     [("input", c.randn(5, 7, scale=2.0)), ("target", c.uniform(5, 7))], {"reduction": reduction},
                     grads=("input",))
        probs = torch.sigmoid(c.randn(3, 11, scale=2.0)).float().double()
        c.functional(f"bce_{reduction}", "binary_cross_entropy", [("input", probs), ("target", c.uniform(3, 11).round())],
                     {"reduction": reduction}, grads=("input",))
        c.functional(f"mse_loss_{reduction}", "mse_loss", [("input", c.randn(3, 7, 5)), ("target", c.randn(3, 7, 5))],
                     {"reduction": reduction}, grads=("input",))
    # binary_cross_entropy on images (a VAE's reconstruction loss), with soft targets.
    img = torch.sigmoid(c.randn(1, 1, 28, 28, scale=2.0)).float().double()
    c.functional("bce_vae_images_sum", "binary_cross_entropy", [("input", img), ("target", c.uniform(1, 1, 28, 28))],
                 {"reduction": "sum"}, grads=("input",))
    c.functional("bce_with_logits_default_reduction", "binary_cross_entropy_with_logits",
                 [("input", c.randn(6, 1)), ("target", c.uniform(6, 1).round())], grads=("input",))
    c.functional("mse_loss_default_reduction", "mse_loss", [("input", c.randn(4, 9)), ("target", c.randn(4, 9))],
                 grads=("input",))

    def kl(mu, logvar):
        return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    for name, n, d, scale in [("kl_normal", 4, 20, 1.0), ("kl_normal_batch1", 1, 3, 1.0), ("kl_normal_wide_logvar", 3, 8, 4.0)]:
        c.add(name, "kl_normal", [("mu", c.randn(n, d)), ("logvar", c.randn(n, d, scale=scale))], kl,
              grads=("mu", "logvar"))


def absent_inputs(c):
    """Optional parameters left out, as PyTorch code leaves them out: the file names the inputs
    it has, so kiln must bind them by name (docs/CHECK.md)."""
    for name, shape, affine, attrs in [("batch_norm1d_train_no_running", (7, 5), True, {"eps": 1e-5}),
                                       ("batch_norm2d_train_no_running", (3, 5, 7, 3), True, {"eps": 1e-3}),
                                       ("batch_norm1d_train_no_running_no_affine", (9, 3), False, {"eps": 1e-5})]:
        batch_norm_case(c, name, shape, True, affine, attrs, running=False)
    batch_norm_case(c, "batch_norm2d_train_no_affine", (3, 3, 5, 7), True, False, {"momentum": 0.2, "eps": 1e-5})
    x, w = c.randn(5, 13), c.randn(7, 13, scale=1 / math.sqrt(13))
    c.functional("linear_no_bias_odd", "linear", [("input", x), ("weight", w)], grads=("input", "weight"))


def long_reductions(c):
    """Reductions over 70,001 values, past the 65,535 loop iterations llvmpipe allows one
    invocation: linear's weight and bias gradients sum over the rows, matmul's product over k.
    As few columns as show that (each f32 of 70,001 is 280 KB of fixture); matmul's gradients
    sum over 2 and 1 values, so only its forward is checked."""
    n = 70_001
    inputs = [("input", c.randn(n, 1)), ("weight", c.randn(2, 1)), ("bias", c.randn(2))]
    c.functional("linear_70001_rows", "linear", inputs, grads=("input", "weight", "bias"))
    c.functional("matmul_70001_k", "matmul", [("input", c.randn(2, n)), ("other", c.randn(n, 1))])


def pooling(c):
    """max_pool2d, avg_pool2d and adaptive_avg_pool2d: LeNet's 2x2 pools, Inception's (3x3
    stride 2 max; 3x3 stride 1 padding 1 average without the padding counted; the global
    mean), and windows that overlap, leave gaps, overhang in ceil_mode, or dilate."""
    cases = [  # name, op, shape, attrs
        ("max_pool2d_2x2", "max_pool2d", (2, 3, 8, 8), {"kernel_size": 2}),
        ("max_pool2d_overlap_pad", "max_pool2d", (1, 2, 7, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),
        ("max_pool2d_ceil_mode", "max_pool2d", (2, 2, 7, 6), {"kernel_size": [3, 2], "stride": 2, "ceil_mode": True}),
        ("max_pool2d_dilation", "max_pool2d", (1, 2, 9, 8), {"kernel_size": 2, "stride": 1, "padding": 1, "dilation": 2}),
        ("max_pool2d_gaps", "max_pool2d", (1, 3, 9, 10), {"kernel_size": 2, "stride": 3}),
        ("max_pool2d_inception", "max_pool2d", (1, 4, 15, 15), {"kernel_size": 3, "stride": 2}),
        ("avg_pool2d_2x2", "avg_pool2d", (2, 3, 8, 8), {"kernel_size": 2}),
        ("avg_pool2d_inception", "avg_pool2d", (2, 4, 9, 9),
         {"kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False}),
        ("avg_pool2d_pad_counted", "avg_pool2d", (1, 2, 7, 5), {"kernel_size": 3, "stride": 2, "padding": 1}),
        ("avg_pool2d_ceil_mode", "avg_pool2d", (1, 2, 7, 6),
         {"kernel_size": [3, 2], "stride": 2, "padding": [1, 0], "ceil_mode": True, "count_include_pad": False}),
        ("avg_pool2d_ceil_mode_pad_counted", "avg_pool2d", (1, 2, 7, 6),
         {"kernel_size": [3, 2], "stride": 2, "padding": [1, 0], "ceil_mode": True}),
        ("avg_pool2d_divisor_override", "avg_pool2d", (1, 2, 6, 6), {"kernel_size": 3, "stride": 3, "divisor_override": 4}),
        ("avg_pool2d_batch1_nonsquare", "avg_pool2d", (1, 1, 5, 11), {"kernel_size": [2, 4], "stride": [1, 3]}),
        ("adaptive_avg_pool2d_1", "adaptive_avg_pool2d", (2, 3, 5, 7), {"output_size": 1}),
        ("adaptive_avg_pool2d_pair", "adaptive_avg_pool2d", (1, 4, 8, 8), {"output_size": [1, 1]}),
        ("adaptive_avg_pool2d_inception", "adaptive_avg_pool2d", (2, 16, 8, 8), {"output_size": 1}),
    ]
    for name, op, shape, attrs in cases:
        c.functional(name, op, [("input", c.randn(*shape))], attrs, grads=("input",))
    # Integers from a small range: most windows hold ties, which PyTorch gives to the first
    # maximum in scan order (and so its gradient).
    ties = c.randn(2, 2, 6, 7, scale=1.5).round()
    c.functional("max_pool2d_ties", "max_pool2d", [("input", ties)],
                 {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, grads=("input",))


def cross_entropy(c):
    """cross_entropy of [N, C] logits and [N] class indices (stored as f32, as every tensor of
    the format is), for each reduction, odd N and C, batch 1, logits far past where exp
    overflows, and 1000 classes."""
    cases = [  # name, N, C, logit scale, offset, reduction
        ("cross_entropy_default_reduction", 4, 10, 2.0, 0.0, None),
        ("cross_entropy_sum_odd", 7, 5, 2.0, 0.0, "sum"),
        ("cross_entropy_none_odd", 5, 13, 3.0, 0.0, "none"),
        ("cross_entropy_batch1", 1, 3, 1.0, 0.0, "mean"),
        ("cross_entropy_large_logits", 3, 6, 30.0, 1000.0, "mean"),
        ("cross_entropy_1000_classes", 2, 1000, 2.0, 0.0, "mean"),
    ]
    for name, n, k, scale, offset, reduction in cases:
        logits = c.randn(n, k, scale=scale) + offset
        target = torch.randint(0, k, (n,), generator=c.gen).double()
        attrs = {} if reduction is None else {"reduction": reduction}
        c.add(name, "cross_entropy", [("input", logits), ("target", target)],
              lambda x, t, a=attrs: F.cross_entropy(x, t.long(), **a), attrs, grads=("input",))


def reshaping(c):
    """torch.cat (with its gradient: each input's slice of the upstream gradient), narrow and
    F.interpolate(mode="bilinear", align_corners=False) as pytorch-fid resizes to 299: odd
    sizes, a batch of 1, up- and downsampling. narrow and interpolate are forward only in kiln
    (neither has a backward)."""
    cat_cases = [  # name, shapes, dim
        ("cat_channels_odd", [(2, 3, 5, 7), (2, 1, 5, 7), (2, 4, 5, 7)], 1),
        ("cat_batch", [(1, 3, 4, 4), (2, 3, 4, 4)], 0),
        ("cat_last_dim", [(3, 5), (3, 1), (3, 9)], 1),
        ("cat_one_tensor", [(2, 6, 3, 3)], 1),
        ("cat_inception_block", [(1, 8, 17, 17), (1, 12, 17, 17), (1, 4, 17, 17)], 1),
        ("cat_width", [(2, 2, 3, 4), (2, 2, 3, 5)], 3),
    ]
    for name, shapes, dim in cat_cases:
        names = [f"t{i}" for i in range(len(shapes))]
        inputs = [(n, c.randn(*shape)) for n, shape in zip(names, shapes)]
        c.add(name, "cat", inputs, lambda *xs, d=dim: torch.cat(xs, dim=d), {"dim": dim}, grads=tuple(names))
    narrow_cases = [  # name, shape, dim, start, length
        ("narrow_channels", (2, 7, 3, 5), 1, 2, 4),
        ("narrow_batch1_tail", (1, 5, 4, 4), 1, 4, 1),
        ("narrow_rows", (3, 11), 0, 0, 2),
        ("narrow_last_dim", (2, 3, 4, 9), 3, 3, 5),
    ]
    for name, shape, dim, start, length in narrow_cases:
        c.add(name, "narrow", [("input", c.randn(*shape))],
              lambda x, d=dim, s=start, n=length: torch.narrow(x, d, s, n), {"dim": dim, "start": start, "length": length})
    resize_cases = [  # name, shape, size
        ("interpolate_up_odd", (2, 3, 7, 5), [11, 13]),
        ("interpolate_down", (1, 2, 30, 20), [7, 9]),
        ("interpolate_mnist_to_75", (2, 1, 28, 28), 75),
        ("interpolate_same_size", (1, 3, 6, 6), [6, 6]),
        ("interpolate_one_pixel", (2, 2, 1, 1), [4, 3]),
    ]
    for name, shape, size in resize_cases:
        attrs = {"size": size, "mode": "bilinear", "align_corners": False}
        c.functional(name, "interpolate", [("input", c.randn(*shape))], attrs)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(root, "fixtures", "torch_cases.safetensors"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    c = Cases()
    # Builders draw from one generator in turn: a new one goes last, so that every earlier
    # case keeps its values (and the fixture its bytes for them).
    for build in [matmul, linear, conv2d, conv_transpose2d, batch_norm, activations, losses, absent_inputs,
                  long_reductions, pooling, cross_entropy, reshaping]:
        build(c)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    c.save(args.out)
    size = os.path.getsize(args.out)
    per_op = {}
    for case in c.meta:
        per_op[case["op"]] = per_op.get(case["op"], 0) + 1
    print(f"{args.out}: {len(c.meta)} cases, {size / 1024:.0f} KiB (torch {torch.__version__})")
    for op, n in per_op.items():
        print(f"  {op}: {n}")
    if size > MAX_BYTES:
        raise SystemExit(f"{args.out} is {size} bytes, over the {MAX_BYTES}-byte budget")


if __name__ == "__main__":
    main()
