"""Test kit for corecompress and its plugins: tiny models, synthetic batches, contract checks.

Third-party plugin authors get the same checks through the pytest plugin
``corecompress.testing.pytest_plugin`` (auto-registered via the ``pytest11`` entry point).
"""
from corecompress.testing.models import TinyCNN, TinyViT

__all__ = ["TinyCNN", "TinyViT"]
