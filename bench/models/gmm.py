"""Gaussian-mixture data distributions with their exact EDM denoiser, exact samples and moments.

For data p(x) = sum_k pi_k N(mu_k, S_k), the noisy marginal at sigma is sum_k pi_k N(mu_k, S_k + sigma^2 I), and the
denoiser (posterior mean) is

    D(x, sigma) = sum_k w_k(x, sigma) [mu_k + S_k (S_k + sigma^2 I)^{-1} (x - mu_k)],
    w_k = softmax_k(log pi_k + log N(x; mu_k, S_k + sigma^2 I)).

Each S_k is kept as its eigendecomposition U diag(lam) U^T, so every sigma costs one rotation per component.
`reference_solution` integrates the PF-ODE dx/dlog(sigma) = x - D(x, sigma) with scipy's DOP853 at rtol 1e-10;
`reference` solves it once for a set of seeds (x_T = noise(seeds)) and caches it on disk, keyed by the mixture's
tensors, the seeds and the sigma range, for the endpoint error and the exact-ODE noise floor alike.

Noise floors (`floor_sources`): "exact_ode", the exact ODE solution from each seed's x_T (what a perfect solver
gives at the cell's seeds), and "data", exact samples of the mixture (one generator per seed).

The exact facts (pi, mu, lam, U, moments) are CPU tensors; `device` (default CPU) is where the denoiser computes and
the noise is drawn, like a network adapter's device (so analytic grids exercise the device paths of the harness).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from solvers.errors import InputError

from .base import Model


class GaussianMixture(Model):
    dtype = torch.float64
    floor_sources = {"exact_ode": "Exact ODE solution", "data": "Exact data samples"}
    rtol = 1e-10                                  # of the reference ODE solution
    threads = 1                                   # tiny problems: one torch thread is fastest beside other work

    def __init__(self, name: str, weights, means, covariances, description: str = "",
                 sigma_min: float = 0.002, sigma_max: float = 80.0, device: str | torch.device = "cpu"):
        self.name = name
        self.device = device
        self.description = description
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.pi = torch.as_tensor(weights, dtype=torch.float64)
        self.pi = self.pi / self.pi.sum()
        self.mu = torch.as_tensor(means, dtype=torch.float64)                   # (K, D)
        cov = torch.as_tensor(covariances, dtype=torch.float64)                 # (K, D, D)
        cov = (cov + cov.transpose(1, 2)) / 2
        self.lam, self.U = torch.linalg.eigh(cov)                              # (K, D), (K, D, D)
        if (self.lam <= 0).any():
            raise InputError("every mixture covariance must be positive definite")
        self.dim = self.mu.shape[1]
        self.shape = (self.dim,)
        self._on_device = None

    # ---- exact facts ---------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        return (self.pi[:, None] * self.mu).sum(0)

    @property
    def covariance(self) -> torch.Tensor:
        cov_k = self.U @ torch.diag_embed(self.lam) @ self.U.transpose(1, 2)
        second = (self.pi[:, None, None] * (cov_k + self.mu[:, :, None] * self.mu[:, None, :])).sum(0)
        m = self.mean
        return second - m[:, None] * m[None, :]

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples of the data distribution."""
        g = generator or torch.Generator().manual_seed(0)
        k = torch.multinomial(self.pi, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return self.mu[k] + torch.einsum("nij,nj->ni", self.U[k], z * self.lam[k].sqrt())

    def component_of(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """The most probable component of each sample x (B, D) under the noisy marginal at sigma (default
        sigma_min): the instance class a final sample belongs to."""
        logw, _ = self._components(x, self.sigma_min if sigma is None else sigma)
        return logw.argmax(1)

    def log_density(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """log p(x; sigma) of the noisy marginal, for x of shape (B, D)."""
        logw, _ = self._components(x, sigma)
        return torch.logsumexp(logw, dim=1)

    # ---- the denoiser --------------------------------------------------------------------
    def _params(self, on_device: bool):
        """(pi, mu, lam, U) on the CPU, or on the model's device (moved once)."""
        if not on_device or torch.device(self.device).type == "cpu":
            return self.pi, self.mu, self.lam, self.U
        if self._on_device is None:
            self._on_device = tuple(t.to(self.device) for t in (self.pi, self.mu, self.lam, self.U))
        return self._on_device

    def _components(self, x: torch.Tensor, sigma, on_device: bool = False):
        pi, mu, lam, U = self._params(on_device)
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1) ** 2    # (B|1, 1, 1)
        y = torch.einsum("bd,kde->bke", x, U) - torch.einsum("kd,kde->ke", mu, U)[None]  # (B,K,D)
        var = lam[None] + s2                                                       # (B|1, K, D)
        logn = -0.5 * ((y ** 2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        logw = pi.log()[None] + logn                                               # (B, K)
        post = torch.einsum("bke,kde->bkd", y * (lam[None] / var), U) + mu[None]   # (B, K, D)
        return logw, post

    def denoise(self, x: torch.Tensor, sigma, on_device: bool = False) -> torch.Tensor:
        logw, post = self._components(x, sigma, on_device)
        w = torch.softmax(logw, dim=1)
        return (w[:, :, None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def denoiser(self, cond=None):
        """D(x, sigma) computed on the model's device (x must be there)."""
        return lambda x, sigma: self.denoise(x, sigma, on_device=True)

    # ---- reference PF-ODE solution ---------------------------------------------------------
    def reference_solution(self, x_T: torch.Tensor, sigma_start: float, sigma_end: float,
                           rtol: float = 1e-10, atol: float = 1e-12) -> torch.Tensor:
        """x(sigma_end) from x(sigma_start) = x_T, to ~rtol, with scipy's DOP853 in u = log sigma."""
        from scipy.integrate import solve_ivp

        shape = x_T.shape
        flat0 = x_T.detach().reshape(-1).to(torch.float64).cpu().numpy()
        B = shape[0]
        if sigma_end <= 0:
            raise InputError("the reference ODE solution needs sigma_end > 0 (it integrates in log sigma)")

        def rhs(u, y):
            x = torch.from_numpy(y).reshape(B, -1)
            s = torch.full((B,), math.exp(u), dtype=torch.float64)
            return (x - self.denoise(x, s)).reshape(-1).numpy()

        sol = solve_ivp(rhs, (math.log(sigma_start), math.log(sigma_end)), flat0, method="DOP853",
                        rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape).to(x_T.dtype)

    def reference(self, seeds, sigma_start: float, sigma_end: float, cache_dir=None) -> torch.Tensor:
        """The reference ODE solution (CPU, float64) from x_T = noise(seeds) over [sigma_start, sigma_end],
        solved once for all `seeds` (a sample's reference never depends on batching) and cached in memory and
        under `cache_dir`/reference."""
        seeds = [int(s) for s in seeds]
        key = self.reference_key(seeds, float(sigma_start), float(sigma_end))
        return self.cached_reference(key, cache_dir, lambda: self.reference_solution(
            self.noise(seeds).to(torch.float64).cpu(), float(sigma_start), float(sigma_end), rtol=self.rtol))

    def reference_key(self, seeds, s0: float, s1: float) -> str:
        """What a cached reference depends on: the mixture's tensors, the seeds, the range and the tolerance."""
        h = hashlib.sha256()
        h.update(f"{self.name}|{s0!r}|{s1!r}|{self.rtol!r}|".encode())
        for t in [v for k, v in sorted(vars(self).items()) if isinstance(v, torch.Tensor)]:
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        h.update(",".join(map(str, seeds)).encode())
        return h.hexdigest()[:20]

    def floor_samples(self, source: str, seeds, sigma_start: float, sigma_end: float, cache_dir=None):
        """Final states of a noise-floor source (`floor_sources`) for `seeds`."""
        if source == "exact_ode":
            return self.reference(seeds, sigma_start, sigma_end, cache_dir)
        if source == "data":
            return torch.cat([self.sample_data(1, torch.Generator().manual_seed(int(s))) for s in seeds])
        raise InputError(f"model {self.name!r} has no noise floor {source!r}; accepted: "
                         f"{', '.join(self.floor_sources)}")


def gmm2d(device: str = "cpu") -> GaussianMixture:
    """2-D, 8 modes on a ring of radius 1 (each slightly anisotropic) plus a broad central mode."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = torch.stack([angles.cos(), angles.sin()], 1)
    covs = []
    for a in angles:
        R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        covs.append(R @ torch.diag(torch.tensor([0.02 ** 2, 0.08 ** 2], dtype=torch.float64)) @ R.T)
    means = torch.cat([means, torch.zeros(1, 2, dtype=torch.float64)])
    covs.append(torch.eye(2, dtype=torch.float64) * 0.15 ** 2)
    weights = [1.0] * 8 + [2.0]
    return GaussianMixture("gmm2d", weights, means, torch.stack(covs),
                           description="2-D Gaussian mixture: 8 thin modes on the unit ring + a central mode",
                           device=device)


def gmm64(components: int = 6, rank: int = 4, seed: int = 1234, device: str = "cpu") -> GaussianMixture:
    """64-D mixture whose components are low-rank-plus-diagonal (a thin, image-like manifold per component)."""
    g = torch.Generator().manual_seed(seed)
    D = 64
    means = 0.5 * torch.randn(components, D, generator=g, dtype=torch.float64)
    A = 0.3 * torch.randn(components, D, rank, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) + (0.03 ** 2) * torch.eye(D, dtype=torch.float64)
    weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture("gmm64", weights, means, covs,
                           description=f"64-D Gaussian mixture: {components} components, rank-{rank} + diagonal "
                                       "covariances", device=device)


def gmm_scales(scales=(0.003, 0.03, 0.3), device: str = "cpu") -> GaussianMixture:
    """The controlled problem of instance-aware discretizations: 2-D, one isotropic component per scale (default
    standard deviations 0.003, 0.03, 0.3: two orders of magnitude), equally weighted, their means spread on the unit
    circle. A trajectory's difficulty lies where sigma meets its component's scale, so the grid a sample needs
    depends on the component it ends in (`component_of`)."""
    scales = [float(v) for v in scales]
    if len(scales) < 2 or any(not v > 0 for v in scales):
        raise InputError(f"gmm_scales needs at least two positive scales, got {scales!r}")
    angles = math.pi / 2 + torch.arange(len(scales), dtype=torch.float64) * (2 * math.pi / len(scales))
    means = torch.stack([angles.cos(), angles.sin()], 1)
    covs = torch.stack([torch.eye(2, dtype=torch.float64) * v ** 2 for v in scales])
    return GaussianMixture("gmm_scales", [1.0] * len(scales), means, covs,
                           description="2-D Gaussian mixture: components of standard deviation "
                                       f"{', '.join(f'{v:g}' for v in scales)} on the unit circle", device=device)
