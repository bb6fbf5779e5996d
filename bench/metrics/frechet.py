"""The Fréchet distance between two Gaussians, in float64, and the statistics it is computed from.

    FD(N(mu1, S1), N(mu2, S2)) = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

FID (Heusel et al. 2017) is this distance between Gaussians fitted to Inception features of generated and
reference images. EDM's fid.py evaluates the last term with scipy.linalg.sqrtm of the non-symmetric product S1 S2,
which takes ~11 s for 2048-d features (~70 s when a covariance is rank-deficient, with complex round-off).
Only the trace of the square root is needed, and S1 S2 is similar to a symmetric PSD matrix M
(M = L^T S2 L with S1 = L L^T, or M = S1^(1/2) S2 S1^(1/2) when S1 is singular), so

    tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(M)),

computed with a Cholesky factorisation and a symmetric eigenvalue solver (`eigvalsh`), real and stable;
round-off eigenvalues below zero are clipped to zero.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from solvers.errors import InputError, one_line


def _as_stats(mu, sigma, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InputError(f"{which}: expected mu of shape (d,) and sigma of shape (d, d); "
                         f"got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise InputError(f"{which}: statistics contain NaN or Inf")
    return mu, sigma


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _sum_sqrt_eigenvalues(m: np.ndarray) -> float:
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def trace_sqrt_product(sigma1, sigma2, method: str = "auto") -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, from the eigenvalues of a symmetric matrix similar to S1 S2.

    "cholesky": S1 = L L^T, M = L^T S2 L (one Cholesky and one eigvalsh: the fast route, S1 positive definite);
    "eigh":     M = S1^(1/2) S2 S1^(1/2) with S1^(1/2) from a full eigendecomposition (any PSD S1);
    "auto":     Cholesky, falling back to eigh when S1 is singular.
    """
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    if method not in ("auto", "cholesky", "eigh"):
        raise InputError(f"unknown method {method!r}; accepted: auto, cholesky, eigh")
    if method in ("auto", "cholesky"):
        try:
            low = np.linalg.cholesky((s1 + s1.T) / 2)
            return _sum_sqrt_eigenvalues(low.T @ s2 @ low)
        except np.linalg.LinAlgError:
            if method == "cholesky":
                raise
    r = _sqrt_psd(s1)
    return _sum_sqrt_eigenvalues(r @ s2 @ r)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, sigma1 = _as_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise InputError(f"statistics of different dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(fd, 0.0))       # tiny negative values are round-off of identical statistics


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """mu and the unbiased covariance (np.cov, as EDM's fid.py) of (N, d) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InputError(f"features must be an (N, d) array with N >= 2; got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


class RunningStatistics:
    """Accumulates mu and sigma batch by batch in float64 (sums of x and x x^T), so features need not be kept."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.sum.shape[0]:
            raise InputError(f"expected features of shape (B, {self.sum.shape[0]}); got {f.shape}")
        self.n += f.shape[0]
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise InputError(f"need at least 2 samples for a covariance; got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma


def save_statistics(path, mu, sigma) -> Path:
    """Write reference statistics as EDM does: an .npz with arrays `mu` and `sigma`."""
    mu, sigma = _as_stats(mu, sigma, "statistics to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:          # a file object: np.savez would otherwise append ".npz" to other names
        np.savez(f, mu=mu, sigma=sigma)
    return path


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    """Read an .npz of reference statistics (`mu`, `sigma`), e.g. EDM's fid-refs/cifar10-32x32.npz."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference statistics not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                raise InputError(f"{path}: reference statistics need arrays 'mu' and 'sigma'; "
                                 f"missing {missing} (found {data.files})")
            return _as_stats(data["mu"], data["sigma"], str(path))
    except InputError:
        raise
    except Exception as e:                      # not an .npz (zip) file, or a truncated one
        raise InputError(f"{path} is not readable reference statistics (.npz with mu, sigma): "
                         f"{type(e).__name__}: {one_line(e)}") from None
