"""Every architecture of benchmarks/timm_coverage.py prunes through the ``timm`` adapter (issue 13, item 4).

For each: groups of the kinds it declares; all kinds pruned together at 30 % (seeded random scores);
masked ≡ physical (relative error ≤ 1e-5); forward + backward of the pruned model; ONNX export of a
sample. Cases marked slow (large inputs or models) run with ``-m slow`` or ``CORECOMPRESS_SLOW=1``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from corecompress.errors import UserError
from corecompress.pruning import make_plan
from corecompress.pruning.agreement import masked_and_physical, relative_error

pytest.importorskip("torch_pruning")

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "timm_coverage.py"
_spec = importlib.util.spec_from_file_location("timm_coverage", BENCHMARK)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)  # type: ignore[union-attr]

TRANSFORMER = ("channels", "heads", "neurons")
#: the kinds each family must offer; hybrids at least CNN filters
DECLARED = {"CNN": ("filters",), "MetaFormer": ("filters",), "hybrid": ("filters",), "ViT": TRANSFORMER,
            "hierarchical": TRANSFORMER}
SLOW = {"resnet50d", "tf_efficientnetv2_b0", "densenet121", "convmixer_768_32", "repvgg_a0", "beit_base_patch16_224",
        "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "twins_svt_small", "nest_tiny",
        "maxvit_tiny_rw_224", "levit_128", "coat_lite_tiny", "cait_xxs24_224", "efficientformerv2_s0"}
ONNX = {"resnet18", "mobilenetv3_small_050", "ghostnet_050", "vit_tiny_patch16_224"}


def declared(family: str) -> tuple[str, ...]:
    return DECLARED[family.split(" ")[0]]


def case(name: str, size: int, family: str):
    marks = [pytest.mark.slow] if name in SLOW else []
    return pytest.param(name, size, declared(family), marks=marks, id=name)


CASES = [case(*arch) for arch in coverage.ARCHITECTURES]


def test_the_list_is_long_and_varied() -> None:
    families = {family.split(" ")[0] for _name, _size, family in coverage.ARCHITECTURES}
    assert len(coverage.ARCHITECTURES) >= 30 and families == set(DECLARED)


@pytest.mark.parametrize(("name", "size", "kinds"), CASES)
def test_architecture_prunes_or_refuses_in_one_line(name: str, size: int, kinds: tuple[str, ...],
                                                    tmp_path: Path) -> None:
    from corecompress_facekit.adapters import TimmBackboneAdapter, TimmBackboneOptions

    torch.manual_seed(0)
    adapter = TimmBackboneAdapter(TimmBackboneOptions(model_name=name, embedding_size=16, img_size=size))
    model = adapter.build().eval()
    try:
        groups = adapter.prunable_groups(model, coverage.KINDS)
    except UserError as exc:  # a declared refusal is one line
        assert "\n" not in str(exc)
        pytest.fail(f"refused: {exc}")
    assert set(kinds) <= {g.kind for g in groups}
    gen = torch.Generator().manual_seed(0)
    plan = make_plan({g.name: torch.rand(g.size, generator=gen) for g in groups}, groups, 0.3)
    masked, physical = masked_and_physical(model, groups, plan)
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        assert relative_error(masked(x), physical(x)) <= 1e-5
    dense = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in physical.parameters()) < dense
    out = physical.train()(x)
    out.pow(2).mean().backward()
    assert out.shape == (2, 16)
    grads = [p.grad for p in physical.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if name in ONNX:
        from corecompress.tools.onnx_export import export_onnx, onnx_relative_error

        pytest.importorskip("onnxruntime")
        path = export_onnx(physical, (3, size, size), tmp_path / "pruned.onnx")
        assert onnx_relative_error(physical, path, (3, size, size)) <= 1e-4
