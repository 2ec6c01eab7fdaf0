"""What users call: the ``corecompress`` command, comparisons, export and loading, measurement."""
