"""The example plugin's own tests, as a third-party author writes them: corecompress's pytest plugin
gives the ``contract_checks`` and ``corecompress_registry`` fixtures; hand-computed values show the
criteria are what they claim. Run with ``pytest`` in this package once it is installed."""
from __future__ import annotations

import torch

from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress_example import CosineKD, CosineKDOptions, NormRatio, NormRatioOptions


# --- contract checks (docs/plugins.md shows this part) ---
def test_the_importance_meets_its_contract(contract_checks):
    checked = contract_checks.check("importance/example_norm_ratio")
    assert checked.detail.endswith("groups scored")


def test_the_distillation_loss_meets_its_contract(contract_checks, corecompress_registry):
    loss = corecompress_registry.get("loss", "example_cosine_kd")
    assert loss.needs == {"teacher"}  # so the check hands it a stand-in teacher's outputs
    contract_checks.check(loss)
# --- end of the contract checks ---


def test_norm_ratio_by_hand():
    model = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8]]))  # row norms 5, 0, 1; mean 2
    group = PrunableGroup(name="fc", kind="neurons", size=3, slices=(Slice("weight", 0),))
    scores = NormRatio(NormRatioOptions(power=2.0)).score(model, [group], context=None)
    assert torch.allclose(scores["fc"], torch.tensor([2.5, 0.0, 0.5]) ** 2)


def test_cosine_kd_by_hand():
    loss = CosineKD(CosineKDOptions(weight=2.0))
    student = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    same = loss(student, {}, student.detach() * 5)  # same directions: distance 0
    orthogonal = loss(student, {}, torch.tensor([[0.0, 1.0], [2.0, 0.0]]))  # distance 1, weighted 2
    assert float(same["loss"]) == 0.0 and float(orthogonal["loss"]) == 2.0
    orthogonal["loss"].backward()
    assert student.grad is not None
