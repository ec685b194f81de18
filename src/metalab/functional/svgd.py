"""Stein variational gradient descent (Liu & Wang 2016) on a set of particles.

Particles are a mapping ``name -> [M, ...]``: particle ``i`` is the slice ``[i]`` of every
tensor (a whole parameter set each). With an RBF kernel ``k(a, b) = exp(-||a - b||^2 / h)``
over the flattened parameter sets, one step (Liu & Wang 2016, eq. 8; Yoon et al. 2018,
eq. 2) is

    theta_i <- theta_i + eps * phi(theta_i),
    phi(theta_i) = (1/M) sum_j [ k(theta_j, theta_i) grad_{theta_j} log p(theta_j)
                                 + grad_{theta_j} k(theta_j, theta_i) ]
                 = (1/M) sum_j k_ij [ -grad L(theta_j) + (2/h) (theta_i - theta_j) ],

with ``log p = -L`` (the loss as the negative log-density, up to its scale). The bandwidth
is the median heuristic ``h = med^2 / log M`` (Liu & Wang 2016, section 5), ``med`` the
(lower) median of the pairwise distances between distinct particles; it is treated as a
constant (no gradient through it). With one particle ``k = 1``, the repulsive term is zero
and the step is plain gradient descent ``theta - eps * grad L``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Params = dict[str, Tensor]


def particle_count(particles: Params) -> int:
    """``M``, the common leading size of every tensor of ``particles``."""
    sizes = {p.shape[0] for p in particles.values()}
    if len(sizes) != 1:
        raise ValueError(f"particles must share their leading (particle) size, got {sizes}")
    return sizes.pop()


def squared_distances(particles: Params) -> Tensor:
    """``[M, M]`` matrix of ``||theta_i - theta_j||^2`` over all parameters."""
    total = 0
    for p in particles.values():
        flat = p.reshape(p.shape[0], -1)
        total = total + ((flat.unsqueeze(1) - flat.unsqueeze(0)) ** 2).sum(-1)
    return total


def median_bandwidth(distances2: Tensor) -> Tensor:
    """``h = med^2 / log M`` from the ``[M, M]`` squared distances (``1`` when ``M = 1``,
    where the kernel is ``1`` whatever ``h``); detached."""
    m = distances2.shape[0]
    if m == 1:
        return torch.ones((), dtype=distances2.dtype, device=distances2.device)
    rows, cols = torch.triu_indices(m, m, offset=1, device=distances2.device)
    median2 = distances2.detach()[rows, cols].median()
    # Coincident particles (median 0) would give h = 0 and 0/0 in the kernel; a floor keeps
    # the kernel 1 between them and 0 between distinct ones.
    return median2.clamp_min(torch.finfo(distances2.dtype).eps) / math.log(m)


def svgd_direction(particles: Params, loss_grads: Params) -> Params:
    """``phi(theta_i)`` for every particle (module doc), from the loss gradients
    ``grad L(theta_j)`` (``name -> [M, ...]``)."""
    m = particle_count(particles)
    distances2 = squared_distances(particles)
    bandwidth = median_bandwidth(distances2)
    kernel = torch.exp(-distances2 / bandwidth)  # symmetric: k_ij = k_ji
    directions = {}
    for name, theta in particles.items():
        flat, grad = theta.reshape(m, -1), loss_grads[name].reshape(m, -1)
        driving = -kernel @ grad
        repulsive = (2.0 / bandwidth) * (kernel.sum(1, keepdim=True) * flat - kernel @ flat)
        directions[name] = ((driving + repulsive) / m).reshape(theta.shape)
    return directions


def svgd_step(particles: Params, loss_grads: Params, step_size: float) -> Params:
    """One SVGD step: ``theta_i + step_size * phi(theta_i)``."""
    directions = svgd_direction(particles, loss_grads)
    return {n: p + step_size * directions[n] for n, p in particles.items()}
