"""Arrays between numpy, torch, JAX and the audited formats: inputs rounded exactly into a format and
handed over as torch tensors bit for bit, and whatever a candidate returns normalised (shape,
dtype, exact rounding into the input's format) so that it can be judged.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import ml_dtypes
import numpy as np

from softaudit.candidates.errors import describe_exception, one_line
from softaudit.formats import FLOAT64, Format, format_of_dtype, round_float64_array


class OutputError(Exception):
    """An output that cannot be judged; the message reads "returned ..."."""


def raw_bits(value: Any) -> np.ndarray:
    """The raw bits of an array, tensor or JAX array as unsigned integers (on the CPU)."""
    if isinstance(value, np.ndarray):
        return value.view(f"u{value.dtype.itemsize}")
    if is_jax_array(value):
        arr = np.asarray(value)
        return arr.view(f"u{arr.dtype.itemsize}")
    return _torch_bits(value)


def output_problem(exc: Exception, raw: object) -> str:
    """The one-line error for an output that could not be judged."""
    if isinstance(exc, OutputError):
        return str(exc)
    return f"returned a {describe_value(raw)} that could not be read ({describe_exception(exc)})"


def as_format(x: np.ndarray, fmt: Format) -> np.ndarray:
    """``x`` as an array of ``fmt`` (exactly rounded when it is in another format)."""
    if x.dtype == fmt.np_dtype:
        return x
    if format_of_dtype(x.dtype) is None:
        raise ValueError(f"input dtype {x.dtype} is not one of the audited formats")
    return round_float64_array(x.astype(np.float64), fmt)


def to_torch(x: np.ndarray, device: str) -> Any:
    """A torch tensor holding exactly the bits of ``x`` (bfloat16 through a uint16 view)."""
    import torch

    if x.dtype == ml_dtypes.bfloat16:
        tensor = torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(x)
    return tensor if device == "cpu" else tensor.to(device)


def to_jax(x: np.ndarray) -> Any:
    """A JAX array on the CPU holding exactly the values of ``x`` (float64 needs JAX's x64 mode:
    ``jax_precision``)."""
    import jax

    return jax.device_put(x, jax.devices("cpu")[0])


@contextlib.contextmanager
def jax_precision(fmt: Format) -> Iterator[None]:
    """JAX's 64-bit mode on while a float64 call runs (without it JAX silently computes float64
    input in float32); other formats run in the mode the process has (off by default, as JAX
    users run float32 and 16-bit code). The mode is restored afterwards; jit caches are keyed on it."""
    if fmt is not FLOAT64:
        yield
        return
    import jax

    enable: Any = getattr(jax, "enable_x64", None)
    if enable is None:  # older jax: the experimental context manager
        enable = importlib.import_module("jax.experimental").enable_x64
    with enable(True):
        yield


def is_jax_array(obj: object) -> bool:
    """Whether ``obj`` is a JAX array (without importing jax)."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(obj, jax.Array)


def block_until_ready(values: Any) -> None:
    """Wait for JAX's asynchronous dispatch to finish computing ``values`` (timings include it)."""
    jax = sys.modules.get("jax")
    if jax is not None:
        with contextlib.suppress(Exception):
            jax.block_until_ready(values)


_TORCH_INT_OF_WIDTH = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


def _torch_bits(tensor: Any) -> np.ndarray:
    """The raw bits of a tensor as a numpy unsigned array (on the CPU)."""
    import torch

    t = tensor.detach().cpu().contiguous()
    as_int = t.view(getattr(torch, _TORCH_INT_OF_WIDTH[t.element_size()])).numpy()
    return as_int.view(f"u{t.element_size()}")


def is_tensor(obj: object) -> bool:
    """Whether ``obj`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _tensor_to_numpy(tensor: Any) -> tuple[np.ndarray, str]:
    """A CPU numpy copy of a tensor's values (bfloat16 via a bit view), and its description."""
    import torch

    desc = f"{tensor.dtype} on {tensor.device}"
    t = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16), desc
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        return t.to(torch.float64).numpy(), desc  # float8 and friends: exact in float64
    return t.numpy(), desc


def describe_value(obj: object) -> str:
    """A short description of what a candidate returned, for error results."""
    if is_tensor(obj):
        return f"{obj.dtype} on {obj.device}"  # type: ignore[attr-defined]
    if is_jax_array(obj):
        return f"jax {obj.dtype}"  # type: ignore[attr-defined]
    if isinstance(obj, (np.ndarray, np.generic)):
        return str(obj.dtype)
    return type(obj).__name__


def _to_array(raw: object) -> tuple[np.ndarray, str]:
    """Turn whatever a candidate returned into a numpy array, with a description."""
    if raw is None:
        raise OutputError("returned None, not an array")
    if is_tensor(raw):
        return _tensor_to_numpy(raw)
    if is_jax_array(raw):
        return np.array(raw, copy=True), f"jax {raw.dtype}"  # type: ignore[attr-defined]  # bfloat16: ml_dtypes
    if isinstance(raw, (np.ndarray, np.generic)):
        return np.asarray(raw), str(raw.dtype)
    if isinstance(raw, (str, bytes, dict, set, bool)):
        raise OutputError(f"returned a {type(raw).__name__}, not an array")
    desc = type(raw).__name__
    try:
        if isinstance(raw, (list, tuple)) and any(is_tensor(e) or is_jax_array(e) or isinstance(e, np.ndarray)
                                                  for e in raw):
            return np.stack([_to_array(e)[0] for e in raw]), desc
        return np.asarray(raw), desc
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"returned a {desc} that is not a regular array ({one_line(str(exc))})") from None


def _is_float_dtype(dtype: np.dtype) -> bool:
    """numpy floats (incl. longdouble) and ml_dtypes floats (bfloat16, float8...)."""
    if dtype.kind == "f":
        return True
    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return True


def normalise_output(
    raw: object, expected: tuple[int, ...], fmt: Format, allow: Iterable[tuple[int, ...]] = (),
    also: Iterable[tuple[int, ...]] = (),
) -> tuple[np.ndarray, str, str | None]:
    """(output in ``fmt`` with shape ``expected``, description, rounding note).

    Shapes in ``allow`` (e.g. (rows, 1) for logsumexp) are accepted and
    reshaped; shapes in ``also`` (a scalar loss) are accepted as they are.
    Raises OutputError for anything that cannot be judged.
    """
    arr, desc = _to_array(raw)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise OutputError(f"returned a {desc} of non-numbers") from None
    if not _is_float_dtype(arr.dtype):
        raise OutputError(f"returned {arr.dtype} values, not floating point")
    also = list(also)
    if arr.shape != expected and arr.shape not in also:
        if arr.shape not in list(allow):
            wanted = " or ".join(str(s) for s in [expected, *also])
            raise OutputError(f"returned shape {arr.shape} but {wanted} was expected")
        arr = arr.reshape(expected)
    out_fmt = format_of_dtype(arr.dtype)
    if out_fmt is fmt:
        return arr.astype(fmt.np_dtype, copy=True), desc, None
    if arr.dtype == np.longdouble and np.finfo(np.longdouble).nmant > 52:
        rounded = _round_longdouble(arr, fmt)
    else:
        rounded = round_float64_array(arr.astype(np.float64), fmt)  # any narrower float -> float64 is exact
    note = f"returned {arr.dtype} for {fmt.name} input; judged after rounding to {fmt.name}"
    return rounded, desc, note


def _round_longdouble(v: np.ndarray, fmt: Format) -> np.ndarray:
    """Round long doubles correctly into ``fmt``.

    hi = v rounded to float64 is correct for float64. For narrower formats,
    rounding hi again is correct except where hi lies exactly halfway between
    two values of ``fmt`` and the remainder lo = v - hi (exact) breaks the tie.
    """
    hi = v.astype(np.float64)
    if fmt is FLOAT64:
        return hi
    lo = (v - hi.astype(np.longdouble)).astype(np.float64)
    near = round_float64_array(hi, fmt).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        other = 2 * hi - near  # the neighbour on hi's other side when hi is a midpoint
        midpoint = np.isfinite(near) & (near != hi) & (round_float64_array(other, fmt).astype(np.float64) == other)
    flip = midpoint & (lo != 0) & (np.sign(lo) == np.sign(other - hi))
    return np.where(flip, other, near).astype(fmt.np_dtype)
