"""The hybrid network: fixed scattering channels in, equivariant harmonic-space CNN, invariant MLP head."""

from __future__ import annotations

import torch
from torch import nn

from scatterdist.sphere import check_nside
from scatterdist.train.layers import (
    InvariantReadout,
    SphericalAnalysis,
    SphericalConv,
    SphericalPointwise,
    TensorProductNonlinearity,
)

NONLINEARITIES = ("tensor", "pointwise", "both")


class HybridCNN(nn.Module):
    """Rotation-invariant classifier of scattering-coefficient maps.

    Input ``(B, in_channels, 12*nside**2)`` float32 HEALPix RING maps (one channel per scattering
    path, at the scattering output resolution); output logits ``(B, n_classes)``.

    Architecture: least-squares analysis to real harmonic coefficients (l <= lmax), then
    ``n_layers`` blocks ``h <- conv(h); h <- h + nonlinearity(h)`` (exactly equivariant with
    ``nonlinearity="tensor"``, approximately with ``"pointwise"``/``"both"``), then the invariant
    read-out (l = 0 part and log power per degree of every channel of the input and of every
    block) into an MLP. With ``nonlinearity="tensor"`` the logits are exactly rotation invariant.
    """

    def __init__(
        self,
        in_channels: int,
        nside: int,
        lmax: int | None = None,
        hidden: int = 16,
        n_classes: int = 2,
        n_layers: int = 2,
        mlp_hidden: int = 64,
        nonlinearity: str = "tensor",
        tp_lmax: int | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        nside = check_nside(nside)
        lmax = 2 * nside - 1 if lmax is None else int(lmax)
        if not 0 < lmax <= 2 * nside - 1:
            raise ValueError(f"lmax must be in 1..2*nside-1={2 * nside - 1} for nside={nside}, got {lmax}")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        if in_channels < 1 or hidden < 1 or n_classes < 2 or n_layers < 1:
            raise ValueError(
                f"need in_channels >= 1, hidden >= 1, n_classes >= 2, n_layers >= 1; got "
                f"{in_channels}, {hidden}, {n_classes}, {n_layers}"
            )
        self.config = {
            "in_channels": int(in_channels), "nside": nside, "lmax": lmax, "hidden": int(hidden),
            "n_classes": int(n_classes), "n_layers": int(n_layers), "mlp_hidden": int(mlp_hidden),
            "nonlinearity": nonlinearity, "tp_lmax": tp_lmax, "activation": activation,
        }
        self.analysis = SphericalAnalysis(nside, lmax)
        self.convs = nn.ModuleList()
        self.tensor = nn.ModuleList()
        self.pointwise = nn.ModuleList()
        channels = int(in_channels)
        for _ in range(n_layers):
            self.convs.append(SphericalConv(channels, hidden, lmax))
            if nonlinearity in ("tensor", "both"):
                self.tensor.append(TensorProductNonlinearity(hidden, lmax, tp_lmax=tp_lmax))
            if nonlinearity in ("pointwise", "both"):
                self.pointwise.append(SphericalPointwise(hidden, nside, lmax, activation=activation))
            channels = hidden
        self.readout = InvariantReadout(lmax)
        n_feat = self.readout.n_features(in_channels) + n_layers * self.readout.n_features(hidden)
        self.head = nn.Sequential(
            nn.LayerNorm(n_feat),
            nn.Linear(n_feat, mlp_hidden),
            nn.ReLU(),
            nn.Linear(mlp_hidden, n_classes),
        )

    def features(self, maps: torch.Tensor) -> torch.Tensor:
        """Rotation-invariant features ``(B, n_features)`` of maps ``(B, in_channels, npix)``."""
        if maps.dim() != 3 or maps.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"HybridCNN expects maps (B, {self.config['in_channels']}, npix), got shape {tuple(maps.shape)}"
            )
        h = self.analysis(maps)
        feats = [self.readout(h)]
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if self.tensor:
                h = h + self.tensor[i](h)
            if self.pointwise:
                h = h + self.pointwise[i](h)
            feats.append(self.readout(h))
        return torch.cat(feats, dim=-1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(maps))
