"""Readers (and small writers) for the face data formats users already have on disk.

One module per format:
:mod:`.recordio` (insightface ``train.rec``/``.idx``/``property``, no mxnet; writer in
:mod:`.recordio_writer`, byte layout in :mod:`.recordio_format`), :mod:`.verification_bin`
(insightface ``lfw.bin`` ... through the restricted unpickler of :mod:`.safe_pickle`), :mod:`.lfw`
(``pairs.txt``), :mod:`.celeba` (attribute + partition lists), :mod:`.identity_folders`
(``root/<identity>/<image>``) and :mod:`.olivetti` (``olivettifaces.mat``).
Malformed files raise :class:`DataFormatError` (a ``ValueError``) and missing ones ``FileNotFoundError``,
each with one line naming the file.
"""
from __future__ import annotations

from .celeba import CelebAAttributes, CelebADataset, read_celeba_attributes, read_celeba_partition
from .errors import DataFormatError
from .identity_folders import IdentityFolderDataset, scan_identity_folders
from .lfw import LFWPair, read_lfw_pairs
from .olivetti import OLIVETTI_SHA256, load_olivetti
from .recordio import RecordHeader, RecordIODataset, read_index, write_recordio
from .safe_pickle import ForbiddenPickleError, restricted_loads
from .verification_bin import VerificationPairs, load_verification_bin, write_verification_bin

__all__ = [
    "CelebAAttributes",
    "CelebADataset",
    "DataFormatError",
    "ForbiddenPickleError",
    "IdentityFolderDataset",
    "LFWPair",
    "OLIVETTI_SHA256",
    "RecordHeader",
    "RecordIODataset",
    "VerificationPairs",
    "load_olivetti",
    "load_verification_bin",
    "read_celeba_attributes",
    "read_celeba_partition",
    "read_index",
    "read_lfw_pairs",
    "restricted_loads",
    "scan_identity_folders",
    "write_recordio",
    "write_verification_bin",
]
