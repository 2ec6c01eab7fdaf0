"""Filter groups of any CNN, derived from Torch-Pruning's dependency graph (network slimming).

Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023 (library ``torch-pruning``)
traces a model once and couples every layer whose channels must be removed together: residual
additions, concatenations (with their offsets), depthwise convolutions, squeeze-excitation, norms
and per-channel parameters. Each of its groups rooted at a conv/linear's output channels becomes one
:class:`PrunableGroup` of kind ``filters`` here — plain slices of the tensors it touches — so soft
masks and physical removal still come from one plan. The group's ``scale`` is the BatchNorm γ that
follows the producing layer: Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017, the CNN rule of FACES.

What slices cannot express exactly is left out: grouped (non-depthwise) and transposed convolutions,
norms over the channel axis (LayerNorm, GroupNorm: masking a channel does not remove it from their
statistics), index mappings other than offsets, unknown layers. A float64 probe then removes a random
part of every group, compares the masked with the physically pruned model on one input, and drops
(by bisection) the groups that disagree — e.g. channels reshaped into attention heads.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from corecompress.errors import UserError
from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.agreement import masked_physical_error
from corecompress.pruning.plan import GroupPlan, PruningPlan

INSTALL_HINT = ("pruning CNN filters needs Torch-Pruning, the optional extra 'torch-pruning': "
                "pip install 'corecompress[torch-pruning]'")

#: max |masked − physical| / max |masked| (float64) above which the probe rejects groups.
PROBE_TOLERANCE = 1e-9

_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)  # noqa: SLF001 - the layers a group may be rooted at


class Unsupported(Exception):
    """A coupled layer or index mapping that slices cannot express."""


def import_torch_pruning() -> Any:
    """The ``torch_pruning`` module, or a one-line UserError naming the extra to install."""
    try:
        import torch_pruning
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return torch_pruning


def graph_filter_groups(model: nn.Module, example_input: torch.Tensor, *, keep_outputs: Sequence[nn.Module] = (),
                        skip_tensors: Iterable[str] = (), probe: bool = True) -> list[PrunableGroup]:
    """``filters`` groups of ``model`` traced on ``example_input``.

    ``keep_outputs``: layers whose output channels must stay (the embedding head); their inputs may
    still be pruned. ``skip_tensors``: tensors other groups already own (transformer blocks); a group
    touching one is left out. ``probe``: drop the groups whose masked and physical results differ.
    """
    tp = import_torch_pruning()
    states = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with warnings.catch_warnings():  # "Unwrapped parameters detected": handled below as plain slices
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        tp_groups = _coupled_groups(tp, graph, keep_outputs)
    except Exception as exc:  # noqa: BLE001 - a model the tracer cannot follow is the user's to hear about, in one line
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UserError(f"filters: Torch-Pruning could not trace {type(model).__name__} "
                        f"({type(exc).__name__}: {detail})") from None
    finally:
        for m, training in states.items():
            m.train(training)
    owned = set(skip_tensors)
    groups = []
    for tp_group in tp_groups:
        try:
            group = _translate(tp, graph, tp_group)
        except Unsupported:
            continue
        if group.size > 1 and not owned.intersection(sl.tensor for sl in group.slices):
            groups.append(group)
    return agreeing_groups(model, groups, example_input) if probe else groups


class _Flattened(Exception):
    """A group's channels reach a flatten/unflatten: one channel becomes many indices (never an offset slice)."""


@contextlib.contextmanager
def _flatten_stops_groups(tp: Any) -> Iterator[None]:
    """While open, Torch-Pruning's flatten index mapping with a stride raises :class:`_Flattened` instead of
    expanding every index (on EfficientFormerV2 that takes minutes per group, for a group dropped anyway)."""
    mapping = tp.dependency.index_mapping._FlattenIndexMapping  # noqa: SLF001
    original = mapping.__call__

    def guarded(self: Any, idxs: Any) -> Any:
        if self._stride > 1:  # noqa: SLF001
            raise _Flattened
        return original(self, idxs)

    mapping.__call__ = guarded
    try:
        yield
    finally:
        mapping.__call__ = original


def _coupled_groups(tp: Any, graph: Any, keep_outputs: Sequence[nn.Module]) -> list[Any]:
    """Torch-Pruning's groups rooted at each conv/linear's output channels (as ``get_all_groups``), each
    layer in one group; a group that pulls in a layer of ``keep_outputs`` or flattens channels is dropped."""
    kept, visited, found = set(map(id, keep_outputs)), set(), []
    with _flatten_stops_groups(tp):
        for module in list(graph.module2node):
            if id(module) in kept or id(module) in visited or not isinstance(module, _LAYERS):
                continue
            pruner = graph.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            try:
                group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                                list(range(pruner.get_out_channels(module))))
            except _Flattened:
                continue
            except Exception:  # noqa: BLE001 - a coupling the library cannot resolve: that layer is not a root
                continue
            outputs = {id(item.dep.target.module) for item in group
                       if graph.is_out_channel_pruning_fn(item.dep.handler)}
            visited |= outputs
            if not outputs & kept:
                found.append(group)
    return found


def _translate(tp: Any, graph: Any, tp_group: Any) -> PrunableGroup:
    """One Torch-Pruning group (full indices, rooted at a layer's output channels) as slices."""
    root_path = _first_producer(graph, tp_group)
    size = len(tp_group[0].idxs)
    pairs: dict[tuple[str, int], set[tuple[int, int]]] = defaultdict(set)
    attributes: list[tuple[str, str]] = []
    for item in tp_group:
        dep = item.dep
        for tensor, dim in _tensors_of(tp, graph, dep):
            pairs[(tensor, dim)].update(zip(item.root_idxs, item.idxs))
        module = dep.target.module
        if isinstance(module, nn.modules.conv._ConvNd) and _depthwise(module):  # noqa: SLF001
            attributes.append((graph._module2name[module], "groups"))  # noqa: SLF001
    slices = tuple(_slice(tensor, dim, found, size) for (tensor, dim), found in pairs.items())
    if any(len(sl.offsets) > 1 for sl in slices if sl.tensor.rpartition(".")[0] in {a[0] for a in attributes}):
        raise Unsupported("a depthwise conv reached twice")
    block = root_path.rpartition(".")[0]
    scale = _scale_of(tp_group, graph, root_path)
    return PrunableGroup(name=f"{root_path}.filters", kind="filters", size=size, slices=slices, block=block,
                         scale=scale, attributes=tuple(dict.fromkeys(attributes)))


def _first_producer(graph: Any, tp_group: Any) -> str:
    """Path of the group's first conv/linear (in the model's module order) whose outputs it prunes: its name."""
    producers = {id(item.dep.target.module) for item in tp_group if graph.is_out_channel_pruning_fn(item.dep.handler)
                 and isinstance(item.dep.target.module, _LAYERS)}
    return next(name for name, m in graph.model.named_modules() if id(m) in producers)


def _scale_of(tp_group: Any, graph: Any, root_path: str) -> str | None:
    """γ of the affine BatchNorm that directly follows (through parameter-free ops) a producer of the
    group — a conv or linear whose outputs it prunes: the first one, else a full conv, else any."""
    producers = [item.dep.target.module for item in tp_group if graph.is_out_channel_pruning_fn(item.dep.handler)
                 and isinstance(item.dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))]  # noqa: SLF001
    size = len(tp_group[0].idxs)
    norms = [item.dep.target for item in tp_group  # γ entries = the units, one to one (not after a concat)
             if isinstance(item.dep.target.module, nn.modules.batchnorm._NormBase)  # noqa: SLF001
             and item.dep.target.module.affine and item.dep.target.module.num_features == size]
    full = [m for m in producers if not (isinstance(m, nn.modules.conv._ConvNd) and _depthwise(m))]  # noqa: SLF001
    for candidates in ([graph.model.get_submodule(root_path)], full, producers):
        for node in norms:
            if any(m in candidates for m in _nearest_layers(node)):
                return f"{graph._module2name[node.module]}.weight"  # noqa: SLF001
    return None


def _nearest_layers(node: Any) -> list[Any]:
    """The modules with parameters that feed ``node`` through parameter-free ops only."""
    seen: set[Any] = set()
    found = []
    frontier = list(node.inputs)
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        if isinstance(current.module, nn.Module) and any(True for _ in current.module.parameters(recurse=False)):
            found.append(current.module)
        else:
            frontier.extend(current.inputs)
    return found


def _depthwise(conv: nn.Module) -> bool:
    return conv.groups > 1 and conv.groups == conv.out_channels == conv.in_channels


def _tensors_of(tp: Any, graph: Any, dep: Any) -> list[tuple[str, int]]:
    """(tensor name, dim) that ``dep``'s pruning function slices; [] for parameter-free ops."""
    target = dep.target
    if target.type == tp.ops.OPTYPE.PARAMETER:
        param = target.module
        return [(graph._param_to_name[param], target.pruning_dim % param.dim())]  # noqa: SLF001
    module = target.module
    if not isinstance(module, nn.Module):
        return []
    if not any(True for _ in module.parameters(recurse=False)) and not any(True for _ in module.buffers(False)):
        return []
    path = graph._module2name[module]  # noqa: SLF001
    out = graph.is_out_channel_pruning_fn(dep.handler)
    own = [n for n in ("weight", "bias") if getattr(module, n, None) is not None]
    if isinstance(module, nn.modules.conv._ConvNd):  # noqa: SLF001
        if module.transposed:
            raise Unsupported(f"{path}: transposed conv")
        if _depthwise(module):
            return [(f"{path}.{n}", 0) for n in own]
        if module.groups > 1:
            raise Unsupported(f"{path}: grouped conv")
        return [(f"{path}.{n}", 0) for n in own] if out else [(f"{path}.weight", 1)]
    if isinstance(module, nn.Linear):
        return [(f"{path}.{n}", 0) for n in own] if out else [(f"{path}.weight", 1)]
    if isinstance(module, nn.modules.batchnorm._NormBase):  # noqa: SLF001
        return [(f"{path}.{n}", 0) for n in _BN_TENSORS if getattr(module, n, None) is not None]
    if isinstance(module, nn.PReLU):
        return [(f"{path}.weight", 0)] if module.num_parameters > 1 else []
    raise Unsupported(f"{path}: {type(module).__name__}")  # LayerNorm, GroupNorm, attention, unknown layers


def _slice(tensor: str, dim: int, found: set[tuple[int, int]], size: int) -> Slice:
    """The slice whose unit ``u`` covers ``offset + u`` for each offset: what (root, index) pairs say."""
    per_root: dict[int, list[int]] = defaultdict(list)
    for root_index, index in found:
        per_root[root_index].append(index)
    if sorted(per_root) != list(range(size)):
        raise Unsupported(f"{tensor}: only some units reach it")
    offsets = sorted(per_root[0])
    for r, indices in per_root.items():
        if sorted(indices) != [o + r for o in offsets]:
            raise Unsupported(f"{tensor}: not an offset mapping")
    if any(b - a < size for a, b in zip(offsets, offsets[1:])):
        raise Unsupported(f"{tensor}: overlapping offsets")
    return Slice(tensor, dim, tuple(offsets))


def agreeing_groups(model: nn.Module, groups: list[PrunableGroup], example_input: torch.Tensor) -> list[PrunableGroup]:
    """The groups for which masking and physical removal agree (float64), found by bisection."""
    if not groups:
        return []
    reference = copy.deepcopy(model).double().eval()
    x = example_input.detach().double()
    return _bisect(reference, groups, x)


def _bisect(reference: nn.Module, groups: list[PrunableGroup], x: torch.Tensor) -> list[PrunableGroup]:
    if _agree(reference, groups, x):
        return groups
    if len(groups) == 1:
        return []
    mid = len(groups) // 2
    return _bisect(reference, groups[:mid], x) + _bisect(reference, groups[mid:], x)


def probe_plan(groups: list[PrunableGroup], seed: int = 0) -> PruningPlan:
    """Every group keeps a seeded random two thirds of its units (at least one, at least one removed)."""
    gen = torch.Generator().manual_seed(seed)
    planned = {}
    for g in groups:
        keep = max(1, min(g.size - 1, (2 * g.size) // 3))
        planned[g.name] = GroupPlan(g.kind, g.size, sorted(torch.randperm(g.size, generator=gen)[:keep].tolist()))
    return PruningPlan(groups=planned)


def _agree(reference: nn.Module, groups: list[PrunableGroup], x: torch.Tensor) -> bool:
    try:
        error = masked_physical_error(reference, groups, probe_plan(groups), x)
    except Exception:  # noqa: BLE001 - whatever breaks the pruned copy disqualifies the groups
        return False
    return error <= PROBE_TOLERANCE
