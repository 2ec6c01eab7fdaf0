"""The stable public surface of the corecompress_distill_baselines plugin: what other plugins may import.

The student → teacher embedding projector (a bias-free ``Linear(d_s → d_t)``, FitNets-style regressor:
Romero et al., ICLR 2015) and the embedding-size helpers around it. Other plugins import these from
here only, never from the plugin's private modules; tests/plugin/test_import_boundaries.py checks it.
"""
from __future__ import annotations

from corecompress_distill_baselines.projector import (
    check_width, make_projector, project, teacher_embedding, teacher_embedding_size,
)

__all__ = ["check_width", "make_projector", "project", "teacher_embedding", "teacher_embedding_size"]
