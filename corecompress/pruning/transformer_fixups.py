"""Fix-ups physical removal needs for particular transformer attentions (fired after removal).

BEiT (Bao et al., ICLR 2022), EVA (Fang et al., CVPR 2023) and timm's SwinV2 keep separate q/v biases
(k's a zero buffer) beside a bias-free fused qkv, and then call ``F.linear`` with ``qkv.weight``
directly — bypassing the module, so a qkv that gathers its kept input channels would be skipped.
Their forwards call ``qkv(x)`` when ``q_bias`` is None; folding the three biases into ``qkv.bias``
leaves the function unchanged and routes the input through the gathering linear.
"""
from __future__ import annotations

import torch
from torch import nn

from corecompress.pruning.physical import GatheredLinear

#: Modules whose attentions call ``qkv(x)`` when ``q_bias`` is None (read in timm 1.0's source).
FOLDING_MODULES = frozenset({"timm.models.beit", "timm.models.eva", "timm.models.swin_transformer_v2"})


def folds_split_biases(attention: nn.Module, linear_name: str) -> bool:
    """True when ``attention.<linear_name>`` is a bias-free qkv beside separate q/v bias parameters, in one
    of the attentions whose forward then takes the ``qkv(x)`` branch once ``q_bias`` is None."""
    linear = getattr(attention, linear_name, None)
    return (type(attention).__module__ in FOLDING_MODULES and linear_name == "qkv" and isinstance(linear, nn.Linear) and linear.bias is None
            and isinstance(getattr(attention, "q_bias", None), nn.Parameter)
            and isinstance(getattr(attention, "v_bias", None), nn.Parameter))


@torch.no_grad()
def fold_split_qkv_biases(model: nn.Module) -> None:
    """Where a qkv gathers its inputs after removal, move q/k/v biases into ``qkv.bias`` (q_bias → None)."""
    for module in model.modules():
        if not (folds_split_biases(module, "qkv") and isinstance(module.qkv, GatheredLinear)):
            continue
        k_bias = getattr(module, "k_bias", None)
        k_bias = torch.zeros_like(module.q_bias) if k_bias is None else k_bias
        module.qkv.bias = nn.Parameter(torch.cat((module.q_bias, k_bias, module.v_bias)).detach().clone(),
                                       requires_grad=module.q_bias.requires_grad)
        module.q_bias = None
        module.v_bias = None
        if "k_bias" in module._buffers or "k_bias" in module._parameters:  # noqa: SLF001
            module.k_bias = None
