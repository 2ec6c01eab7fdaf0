"""Efficiency measurements of any ``torch.nn.Module``: parameters, MACs, throughput, peak memory.

Follows the spec (/work/shared/spec/evaluation.md, "Efficiency"):

* parameters are counted as stored; a masked model also reports its non-zero parameters -- a
  masked model is never "smaller", only a physically pruned one is;
* MACs per image at the model's input size, attention products included, from
  ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x MACs);
* latency / throughput in eval mode without grad, at a fixed thread count, after warm-up, as the
  median of >= 10 timed runs, synchronising CUDA before reading the clock; several models are
  compared in one process with interleaved runs so that drift (thermal, other load) hits all alike;
  every timing carries its spread, the coefficient of variation (CV = sample standard deviation / mean)
  of its repeats, and a throughput whose CV exceeds :data:`NOISY_CV` is not to be trusted: reports show
  it as "noisy: CV 85 %" (:mod:`corecompress.tools.spread`) rather than as a plain figure;
* peak memory of inference and of a training step.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from corecompress.tools.spread import CV_SUFFIX, NOISY_CV, noisy_label, spread  # noqa: F401 - re-exported

MIN_REPEATS = 10

InputSpec = Sequence[int] | int


def count_parameters(model: nn.Module, only_trainable: bool = False) -> int:
    """Number of stored parameter elements (shared parameters once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not only_trainable)


def count_nonzero_parameters(model: nn.Module) -> int:
    """Number of non-zero elements of the parameters as the model uses them.

    Masks are honoured: for ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) and for
    ``torch.nn.utils.parametrize`` the effective tensor (``module.weight``) is counted instead of the
    stored original; every other parameter is counted as stored. Shared parameters count once.
    """
    from torch.nn.utils import parametrize

    total = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # its originals are counted through the effective tensor of the owner module
        effective: dict[str, torch.Tensor] = {}
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                effective[name] = getattr(module, name)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            base = name[: -len("_orig")] if name.endswith("_orig") else None
            if base is not None and hasattr(module, base + "_mask"):
                effective[base] = getattr(module, base)
            else:
                effective.setdefault(name, param)
        with torch.no_grad():
            total += sum(int(torch.count_nonzero(t)) for t in effective.values())
    return total


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _make_batch(model: nn.Module, input_shape: InputSpec, batch_size: int, device: torch.device | None) -> torch.Tensor:
    """Random batch of ``batch_size`` samples of ``input_shape`` (no batch dimension), dtype of the model."""
    model_device, dtype = _model_device_dtype(model)
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    return torch.randn((batch_size, *shape), device=device or model_device, dtype=dtype)


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the duration; the model's previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextmanager
def _all_in_inference(models: Any) -> Iterator[None]:
    """Put every model in inference mode (eval, no grad) at once; restore their modes afterwards."""
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(_inference(model))
        yield


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Fix torch's intra-op thread count for the duration, then restore it."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def count_macs(model: nn.Module, input_shape: InputSpec | None = None, *, example_input: Any = None) -> int:
    """Multiply-accumulates of one forward pass: per image with ``input_shape`` (no batch dimension,
    a batch of 1 is built), or for the given ``example_input`` (a tensor or a tuple of arguments).

    Counted: every matmul / linear / conv / attention product FlopCounterMode knows, halved. Not
    counted: element-wise work (norms, activations, softmax, additions), as in the papers' MAC counts.
    Attention is forced through PyTorch's math path while counting -- the fused CPU attention kernel
    and the fused ``nn.MultiheadAttention`` inference path are invisible to FlopCounterMode -- so its
    two matrix products are seen; the count does not depend on which kernel runs at inference.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if (input_shape is None) == (example_input is None):
        raise ValueError("give exactly one of input_shape and example_input")
    if example_input is None:
        example_input = _make_batch(model, input_shape, 1, None)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _inference(model), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            _call(model, example_input)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() // 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Seconds per call of ``calls`` back-to-back calls, CUDA synchronised before each clock reading."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    _synchronize(device)
    return (time.perf_counter() - start) / calls


def time_interleaved(calls: Mapping[str, Callable[[], Any]], *, warmup: int, repeats: int,
                     device: torch.device | str = "cpu", inner: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each callable, measured in this process, interleaved.

    Each callable first runs ``warmup`` times; then ``repeats`` rounds each time every callable once
    (``inner`` calls back to back, averaged), in an order rotating from round to round so that none is
    always first. On a CUDA ``device`` the clock is read only after ``torch.cuda.synchronize``.
    """
    if repeats < 1 or inner < 1 or warmup < 0:
        raise ValueError("repeats and inner must be >= 1 and warmup >= 0")
    device = torch.device(device)
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_timed(calls[name], inner, device))
    return times


def _summary(times: list[float], batch_size: int, threads: int) -> dict[str, Any]:
    median = statistics.median(times)
    cv = spread(times)
    return {
        "median_s": median,
        "images_per_s": batch_size / median,
        "cv": cv,
        "noisy": cv > NOISY_CV,
        "min_s": min(times),
        "max_s": max(times),
        "times_s": list(times),
        "batch_size": batch_size,
        "threads": threads,
        "repeats": len(times),
    }


def _check_repeats(warmup: int, repeats: int) -> None:
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be >= {MIN_REPEATS} (the spec reports the median of at least {MIN_REPEATS} runs)")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")


def measure_throughput(
    model: nn.Module,
    input_shape: InputSpec,
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Latency of one batch (median of ``repeats`` timed runs after ``warmup``) and images per second.

    ``input_shape`` is one sample's shape without the batch dimension, e.g. ``(3, 112, 112)``.
    ``threads`` fixes torch's intra-op thread count for the measurement (restored afterwards);
    ``None`` keeps the current count, which the result records either way.
    Returns ``median_s``, ``images_per_s`` (= batch_size / median_s), ``cv`` (the repeats' coefficient of
    variation), ``noisy`` (``cv`` > :data:`NOISY_CV`), ``min_s``, ``max_s``, ``times_s``, ``batch_size``,
    ``threads``, ``repeats``. The input is random, on the model's device unless given.
    """
    result = compare_throughput(
        {"model": model}, input_shape, batch_size, reference="model",
        threads=threads, warmup=warmup, repeats=repeats, device=device,
    )["model"]
    del result["speedup"], result["speedup_cv"]
    return result


def compare_throughput(
    models: Mapping[str, nn.Module],
    input_shape: InputSpec,
    batch_size: int = 1,
    *,
    reference: str,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure several models in this process, interleaved, and their speed against ``reference``.

    Each round times every model once; the order rotates from round to round so that no model is
    always first. Each entry is :func:`measure_throughput`'s dict plus ``speedup`` = its images/s
    divided by the reference's (>1 = faster than the reference) and ``speedup_cv``, the larger of the two
    models' CVs (a ratio is no steadier than the noisier of its parts).
    """
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not among the models {sorted(models)}")
    _check_repeats(warmup, repeats)
    names = list(models)
    device = torch.device(device) if device is not None else None
    batches = {name: _make_batch(models[name], input_shape, batch_size, device) for name in names}
    calls = {name: functools.partial(models[name], batches[name]) for name in names}
    with _threads(threads), _all_in_inference(models.values()):
        used_threads = torch.get_num_threads()
        clock_device = next((b.device for b in batches.values() if b.device.type == "cuda"), torch.device("cpu"))
        times = time_interleaved(calls, warmup=warmup, repeats=repeats, device=clock_device)
    results = {name: _summary(times[name], batch_size, used_threads) for name in names}
    reference_rate = results[reference]["images_per_s"]
    for entry in results.values():
        entry["speedup"] = entry["images_per_s"] / reference_rate
        entry["speedup_cv"] = max(entry["cv"], results[reference]["cv"])
    return results


def _parameter_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _cpu_profiled_peak(step: Callable[[], None]) -> int:
    """Peak of the net bytes allocated by torch's CPU allocator while ``step`` runs.

    Reads the allocation / free events the PyTorch profiler records with ``profile_memory=True``
    and returns the maximum of their running sum.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    from torch._C._autograd import DeviceType

    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError("this PyTorch's profiler exposes no memory events; CPU peak memory is unavailable")
    events = [
        e for e in results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _read_vm_hwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_vm_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory(
    model: nn.Module,
    input_shape: InputSpec,
    batch_size: int = 1,
    mode: str = "inference",
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    optimizer_factory: Callable[[Any], torch.optim.Optimizer] | None = None,
    include_rss: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Peak memory of one inference batch (eval, no grad) or one training step, in bytes.

    ``peak_bytes`` is the memory the step adds on top of what is resident before it (weights,
    buffers and the input batch are excluded; ``model_bytes`` gives the weights and buffers).
    A training step (``mode="train"``) runs on a deep copy of the model in train mode -- the caller's
    weights, gradients and BatchNorm statistics are untouched: forward, ``loss_fn(output)`` (default
    ``output.float().mean()``), backward, and ``optimizer.step()`` when ``optimizer_factory`` is
    given (its state, e.g. Adam's moments, is then included).

    How it is measured, and the limits:

    * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
      allocation before the step. Tensor memory only: the caching allocator's reserve, cuDNN/cuBLAS
      workspaces allocated outside it and the CUDA context are not included.
    * CPU: the running sum of the allocation events the PyTorch profiler records
      (``profile_memory=True``) for torch's CPU allocator. It sees tensors and workspaces made
      through that allocator, exactly; not memory taken directly by libraries (oneDNN/BLAS scratch,
      Python objects) nor allocator fragmentation. ``tracemalloc`` cannot see torch tensors and
      ``ru_maxrss`` only ever grows, so neither is used. The profiler's C++ layer (kineto) writes
      two log lines per measurement to stderr; this function itself prints nothing.
    * ``include_rss=True`` (Linux only) also resets the process's resident-set high-water mark
      (writing 5 to ``/proc/self/clear_refs``; this affects anything else reading VmHWM) and reports
      ``rss_peak_delta_bytes`` = VmHWM after minus resident size before: process-wide, includes
      everything above, but coarse (pages, other threads, memory the allocator keeps).
    """
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    device = torch.device(device) if device is not None else _model_device_dtype(model)[0]
    subject = model
    if mode == "train":
        subject = copy.deepcopy(model).to(device)
        subject.train()
        subject.zero_grad(set_to_none=True)
    optimizer = optimizer_factory(subject.parameters()) if (mode == "train" and optimizer_factory) else None
    batch = _make_batch(subject, input_shape, batch_size, device)

    def step() -> None:
        if mode == "inference":
            with _inference(subject):
                subject(batch)
            return
        output = subject(batch)
        if loss_fn is not None:
            loss = loss_fn(output)
        elif isinstance(output, torch.Tensor):
            loss = output.float().mean()
        else:
            raise ValueError("the model returns a non-tensor output: pass loss_fn to reduce it to a scalar")
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    result: dict[str, Any] = {"mode": mode, "batch_size": batch_size, "model_bytes": _parameter_bytes(model)}
    rss_before = None
    if include_rss and _reset_vm_hwm():
        rss_before = _read_vm_hwm()  # right after the reset, the high-water mark is the current RSS
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - before
        result["method"] = "torch.cuda.max_memory_allocated"
    else:
        result["peak_bytes"] = _cpu_profiled_peak(step)
        result["method"] = "torch.profiler CPU allocator events"
    if include_rss:
        after = _read_vm_hwm()
        result["rss_peak_delta_bytes"] = after - rss_before if (after is not None and rss_before is not None) else None
    return result
