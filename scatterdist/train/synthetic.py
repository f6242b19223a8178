"""Moved to :mod:`scatterdist.testing` (test-data builders do not belong to the trainer).

Transitional re-export until the last importer (tests/test_deploy.py) uses the new module;
then this file is deleted.
"""

from scatterdist.testing import SyntheticChannels, synthetic_maps, write_synthetic_store  # noqa: F401
