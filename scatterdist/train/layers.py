"""Rotation-equivariant layers on HEALPix signals at the scattering output resolution (torch).

Signals inside the network are real spherical-harmonic coefficients ``(B, C, (lmax+1)**2)``
in the basis of :mod:`scatterdist.train.harmonics` (index ``l*l + l + m``). The transforms
between maps ``(B, C, npix)`` and coefficients are dense matrices built once with ducc0 and
kept as non-persistent buffers (exact, cheap at nside_out <= 16, rebuilt on construction so
checkpoints stay small).

Equivariance (rotation R acting on coefficients by the real Wigner-D matrices):
- :class:`SphericalConv` (axisymmetric filter, per-degree channel mixing): exact.
- :class:`TensorProductNonlinearity` (Gaunt / Clebsch-Gordan couplings): exact.
- :class:`SphericalPointwise` (activation applied on the HEALPix grid): approximate, the
  error comes from aliasing of the non-bandlimited activated map; measure it.
- :class:`InvariantReadout`: exactly invariant.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from scatterdist.sphere import nside2npix
from scatterdist.train import harmonics as H

_ACTIVATIONS = {"relu": torch.relu, "gelu": nn.functional.gelu, "tanh": torch.tanh, "softplus": nn.functional.softplus}


def _check_coeffs(x: torch.Tensor, lmax: int, channels: int | None, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} expects coefficients (B, C, (lmax+1)**2), got shape {tuple(x.shape)}")
    if x.shape[-1] != H.n_real(lmax):
        raise ValueError(f"{name} expects {H.n_real(lmax)} coefficients (lmax={lmax}), got {x.shape[-1]}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} channels, got {x.shape[1]}")


class SphericalAnalysis(nn.Module):
    """HEALPix RING maps ``(B, C, npix)`` -> real coefficients ``(B, C, (lmax+1)**2)`` (least squares)."""

    def __init__(self, nside: int, lmax: int) -> None:
        super().__init__()
        self.nside, self.lmax = int(nside), int(lmax)
        self.npix = nside2npix(self.nside)
        self.register_buffer(
            "matrix", torch.from_numpy(np.ascontiguousarray(H.analysis_matrix(self.nside, self.lmax).T, dtype=np.float32)),
            persistent=False,
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.shape[-1] != self.npix:
            raise ValueError(f"expected maps with {self.npix} pixels (nside={self.nside}), got {maps.shape[-1]}")
        return maps @ self.matrix


class SphericalSynthesis(nn.Module):
    """Real coefficients ``(B, C, (lmax+1)**2)`` -> HEALPix RING maps ``(B, C, npix)``."""

    def __init__(self, nside: int, lmax: int) -> None:
        super().__init__()
        self.nside, self.lmax = int(nside), int(lmax)
        self.register_buffer(
            "matrix", torch.from_numpy(np.ascontiguousarray(H.synthesis_matrix(self.nside, self.lmax).T, dtype=np.float32)),
            persistent=False,
        )

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        return coeffs @ self.matrix


class SphericalConv(nn.Module):
    """Convolution with learned axisymmetric filters: ``out[o]_lm = sum_i w[o, i, l] x[i]_lm (+ b[o] at l=0)``.

    Exactly rotation-equivariant (a per-degree linear map commutes with every Wigner-D block).
    ``weight`` has shape ``(out_channels, in_channels, lmax+1)``; the bias only touches l = 0.
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.lmax = int(in_channels), int(out_channels), int(lmax)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, lmax + 1) / np.sqrt(in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("degree", torch.from_numpy(H.real_degree_index(self.lmax).astype(np.int64)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_coeffs(x, self.lmax, self.in_channels, "SphericalConv")
        w = self.weight[:, :, self.degree]  # (O, I, K)
        out = torch.einsum("bik,oik->bok", x, w)
        if self.bias is not None:
            out = torch.cat([out[..., :1] + self.bias[None, :, None], out[..., 1:]], dim=-1)
        return out


class TensorProductNonlinearity(nn.Module):
    """Channel-wise tensor-product (Clebsch-Gordan / Gaunt) nonlinearity, exactly equivariant.

    For every channel c and every path ``(l1, l2) -> L`` of a reduced degree-mixing set
    (Cobb et al., ICLR 2021; default :func:`scatterdist.train.harmonics.mst_pairs`):
    ``out[c]_{L M} = sum_paths w[c, path] sum_{m1 m2} G^{L M}_{l1 m1, l2 m2} x[c]_{l1 m1} x[c]_{l2 m2}``
    with G the real Gaunt coefficients (the parity-even Clebsch-Gordan couplings, i.e. the
    harmonic projection of the pointwise product of the degree-l1 and degree-l2 fragments).
    Cost O(C * nnz(G)) per sample, through one sparse matmul.

    ``tp_lmax`` caps the input degrees that take part (default: all); outputs cover L <= lmax.
    """

    def __init__(
        self,
        channels: int,
        lmax: int,
        pairs: list[tuple[int, int]] | None = None,
        tp_lmax: int | None = None,
    ) -> None:
        super().__init__()
        self.channels, self.lmax = int(channels), int(lmax)
        self.tp_lmax = self.lmax if tp_lmax is None else min(int(tp_lmax), self.lmax)
        if pairs is None:
            pairs = H.mst_pairs(self.tp_lmax)
        self.pairs = [tuple(int(v) for v in p) for p in pairs]
        g = H.gaunt_entries(self.lmax, self.pairs)
        self.paths = [tuple(int(v) for v in p) for p in g["paths"]]
        npaths = len(self.paths)
        # unique input products (i, j) -> column of the product matrix
        ij = g["i"] * H.n_real(self.lmax) + g["j"]
        uniq, inv = np.unique(ij, return_inverse=True)
        # output slots: one per (path, M); slot k-index and path index
        path_L = g["paths"][:, 2]
        slot_start = np.concatenate([[0], np.cumsum(2 * path_L + 1)])[:-1]
        out_m = g["out"] - path_L[g["path"]] ** 2 - path_L[g["path"]]
        slot = slot_start[g["path"]] + out_m + path_L[g["path"]]
        nslots = int((2 * path_L + 1).sum())
        slot_path = np.repeat(np.arange(npaths), 2 * path_L + 1)
        slot_out = np.concatenate([L * L + np.arange(2 * L + 1) for L in path_L])
        self.register_buffer("prod_i", torch.from_numpy(uniq // H.n_real(self.lmax)), persistent=False)
        self.register_buffer("prod_j", torch.from_numpy(uniq % H.n_real(self.lmax)), persistent=False)
        coupling = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([slot, inv])),
            torch.from_numpy(g["value"].astype(np.float32)),
            (nslots, len(uniq)),
            check_invariants=True,
        ).coalesce()
        self.register_buffer("coupling_index", coupling.indices(), persistent=False)
        self.register_buffer("coupling_value", coupling.values(), persistent=False)
        self.coupling_shape = (nslots, len(uniq))
        self.register_buffer("slot_path", torch.from_numpy(slot_path), persistent=False)
        self.register_buffer("slot_out", torch.from_numpy(slot_out), persistent=False)
        self.weight = nn.Parameter(torch.randn(self.channels, npaths) / np.sqrt(npaths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_coeffs(x, self.lmax, self.channels, "TensorProductNonlinearity")
        b, c, k = x.shape
        # work on rows (coefficient-major): row gathers and row index_add are memcpy-like
        xt = x.permute(2, 0, 1).reshape(k, b * c)
        prods = xt.index_select(0, self.prod_i) * xt.index_select(0, self.prod_j)  # (U, B*C)
        coupling = torch.sparse_coo_tensor(
            self.coupling_index, self.coupling_value.to(x.dtype), self.coupling_shape, is_coalesced=True,
            check_invariants=False,
        )
        slots = torch.sparse.mm(coupling, prods).reshape(-1, b, c)  # (S, B, C)
        slots = slots * self.weight.T[self.slot_path][:, None, :]
        out = torch.zeros(k, b, c, dtype=x.dtype, device=x.device).index_add(0, self.slot_out, slots)
        return out.permute(1, 2, 0)


class SphericalPointwise(nn.Module):
    """Pointwise activation on the sphere: synthesise, ``act(f + b_c)``, analyse back to ``lmax``.

    Only approximately equivariant: ``act`` creates power above ``lmax`` that the HEALPix grid at
    ``nside * oversample`` aliases. ``b`` is a learned per-channel constant (a rotation-invariant shift).
    """

    def __init__(self, channels: int, nside: int, lmax: int, activation: str = "relu", oversample: int = 1) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if oversample < 1 or (oversample & (oversample - 1)):
            raise ValueError(f"oversample must be a power of two >= 1, got {oversample}")
        self.channels, self.lmax, self.activation = int(channels), int(lmax), activation
        grid = int(nside) * int(oversample)
        self.synthesis = SphericalSynthesis(grid, self.lmax)
        self.analysis = SphericalAnalysis(grid, self.lmax)
        self.bias = nn.Parameter(torch.zeros(self.channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_coeffs(x, self.lmax, self.channels, "SphericalPointwise")
        maps = self.synthesis(x) + self.bias[None, :, None]
        return self.analysis(_ACTIVATIONS[self.activation](maps))


class InvariantReadout(nn.Module):
    """Rotation-invariant features per channel: the l = 0 coefficient and ``log(eps + power_l)``.

    ``power_l = sum_m x_lm**2 / (2l+1)`` (the angular power spectrum). Output ``(B, C * (lmax + 2))``.
    """

    def __init__(self, lmax: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.lmax, self.eps = int(lmax), float(eps)
        self.register_buffer("degree", torch.from_numpy(H.real_degree_index(self.lmax).astype(np.int64)), persistent=False)
        self.register_buffer(
            "inv_multiplicity", torch.from_numpy(1.0 / (2 * np.arange(self.lmax + 1) + 1.0)).float(), persistent=False
        )

    def n_features(self, channels: int) -> int:
        """Number of output features for ``channels`` input channels."""
        return channels * (self.lmax + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_coeffs(x, self.lmax, None, "InvariantReadout")
        b, c, _ = x.shape
        power = torch.zeros(b, c, self.lmax + 1, dtype=x.dtype, device=x.device).index_add(-1, self.degree, x * x)
        power = torch.log(self.eps + power * self.inv_multiplicity)
        return torch.cat([x[..., :1], power], dim=-1).reshape(b, -1)
