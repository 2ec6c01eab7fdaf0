"""Test kit for corecompress and its plugins: stand-in models, synthetic batches, contract checks.

Stand-in models come through the registry (:func:`stand_in_model`: the built-in plugin's ``tiny_vit`` /
``tiny_cnn``); the core imports no plugin. Third-party plugin authors get the same checks through the
pytest plugin ``corecompress.testing.pytest_plugin`` (auto-registered via the ``pytest11`` entry point).
"""
from corecompress.testing.stand_ins import stand_in_model, stand_in_registry

__all__ = ["stand_in_model", "stand_in_registry"]
