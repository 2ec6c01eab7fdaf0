"""corecompress_adadistill: AdaDistill (Boutros et al., ECCV 2024) as a loss component ``adadistill``.

:mod:`.centres` holds the ordered, rank-synchronised centre update; :mod:`.loss` the loss module
and its options. Implemented from the paper's description, not from the authors' code (licensed CC BY-NC-SA).
"""
from __future__ import annotations

from typing import Any

from corecompress import hookimpl


@hookimpl
def register_losses(register: Any) -> None:
    from corecompress_adadistill import loss

    loss.register(register)
