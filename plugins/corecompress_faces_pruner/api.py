"""The stable public surface of the corecompress_faces_pruner plugin (FACES, Lajić et al., ICT Express 2026).

What other plugins and user code may import; the plugin's other modules are private and may change
(tests/plugin/test_import_boundaries.py checks that no plugin reaches into them).
"""
from __future__ import annotations

from corecompress_faces_pruner.attributes import FacesAttributeHead

__all__ = ["FacesAttributeHead"]
