"""Writes fixtures/metrics.safetensors: matrix square roots, FIDs and precision/recall computed
independently of kiln, with scipy and numpy, the way pytorch-fid and the `prdc` package do,
for tests/metrics.rs to compare against.

- sqrtm/<case>/a, sqrtm/<case>/root: a symmetric PSD matrix and scipy.linalg.sqrtm of it (one
  full-rank, one of rank 5 in 12 dimensions: a covariance of fewer vectors than features).
- fid/<case>/x, fid/<case>/y, fid/<case>/value: two feature sets and pytorch-fid's
  calculate_frechet_distance of their np.mean / np.cov(rowvar=False) (scipy sqrtm of the
  non-symmetric product, imaginary noise dropped).
- pr/x, pr/y, pr/value: two feature sets and [precision, recall] with k = 3 (Kynkäänniemi et
  al. 2019, distances <= the k-th neighbour radius).
Run: pip install numpy scipy safetensors && python3 scripts/metrics_fixtures.py
"""
import numpy as np
from scipy import linalg
from safetensors.numpy import save_file

rng = np.random.default_rng(20261201)
out = {}


def psd(d, rank):
    m = rng.standard_normal((d, rank))
    return m @ m.T / rank


for name, d, rank in [("full", 9, 30), ("rank5", 12, 5)]:
    a = psd(d, rank)
    out[f"sqrtm/{name}/a"] = a
    out[f"sqrtm/{name}/root"] = np.real(linalg.sqrtm(a))


def frechet(x, y):
    # pytorch-fid's calculate_frechet_distance, eps handling included.
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


# Correlated, shifted and scaled sets, so the covariances do not commute.
for name, n, d in [("small", 50, 6), ("wide", 400, 32)]:
    mix = rng.standard_normal((d, d))
    x = rng.standard_normal((n, d)) @ mix
    y = rng.standard_normal((n, d)) @ (mix + 0.3 * rng.standard_normal((d, d))) + 0.5
    x, y = x.astype(np.float32), y.astype(np.float32)
    out[f"fid/{name}/x"], out[f"fid/{name}/y"] = x, y
    out[f"fid/{name}/value"] = np.array([frechet(x.astype(np.float64), y.astype(np.float64))])


def radii(f, k):
    d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]  # index 0 is the vector itself


def coverage(probe, manifold, k):
    d = np.sqrt(((probe[:, None, :] - manifold[None, :, :]) ** 2).sum(-1))
    return (d <= radii(manifold, k)[None, :]).any(axis=1).mean()


x = rng.standard_normal((300, 5)).astype(np.float32)
y = (rng.standard_normal((250, 5)) * 1.5 + 0.4).astype(np.float32)
x64, y64 = x.astype(np.float64), y.astype(np.float64)
out["pr/x"], out["pr/y"] = x, y
out["pr/value"] = np.array([coverage(y64, x64, 3), coverage(x64, y64, 3)])

save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, "fixtures/metrics.safetensors",
          metadata={"source": "scripts/metrics_fixtures.py"})
print("wrote fixtures/metrics.safetensors:", len(out), "tensors")
