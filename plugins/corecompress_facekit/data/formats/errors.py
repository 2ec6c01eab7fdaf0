"""Errors raised by the face data-format readers.

Every message is one line that names the file (and the record, line or key) and the problem, so the
CLI can print it as is. Missing files raise :class:`FileNotFoundError` with such a line.
"""
from __future__ import annotations


from corecompress.errors import DataFormatError  # noqa: E402 - shared by every reader
