"""The spherical scattering transform: filters, the algorithm (core), backends and frontend."""

from scatterdist.scattering.filters import FilterBank, path_label, scattering_paths
from scatterdist.scattering.frontend import Scattering
from scatterdist.scattering.covariance import ScatteringCovariance
from scatterdist.scattering.inputs import UNSEEN, InvalidMapError, check_maps

__all__ = ["FilterBank", "InvalidMapError", "Scattering", "ScatteringCovariance", "UNSEEN", "check_maps", "path_label", "scattering_paths"]
