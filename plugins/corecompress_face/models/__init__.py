"""Part of the corecompress_face built-in plugin."""
