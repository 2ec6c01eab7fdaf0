"""The parts of ``benchmarks/gpu_check.py`` (issue 12, item 6): one module per section, plus the shapes,
precision, device and report helpers they share. Imported as ``gpucheck.<module>`` by that script
(``benchmarks/`` is on ``sys.path`` when it runs)."""
