"""Part of the corecompress_facekit built-in plugin."""
