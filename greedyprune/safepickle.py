"""Reading plain pickles (a data set's file format) without running code or exhausting memory.

:func:`load_pickle_restricted` unpickles with Python's own pure-Python unpickler, restricted three ways:

* **Globals.** Only those in ``allowed`` resolve (default :data:`NUMPY_ARRAY_GLOBALS`); any other - a class,
  ``os.system``, ``exec`` - is refused, naming it and the file, before it can be called. The admitted ones are
  checked stand-ins: ``numpy.ndarray`` cannot be called directly (a direct call can give an array any strides,
  zero strides included, so that a few bytes claim gigabytes), ``numpy.dtype`` makes only fresh dtypes of numbers.
* **Arrays come only through numpy's own reconstruction path**: ``numpy(._)core.multiarray._reconstruct`` makes
  an empty array, and the one BUILD (``__setstate__``) that follows gives it a dtype of numbers, a shape and
  exactly the bytes that shape needs; under protocol 5, ``_frombuffer`` the same from an in-band buffer. The
  bytes of all arrays together must fit in the file (a buffer reused through the memo counts each time).
* **BUILD** (``__setstate__``) is admitted only on such a fresh array, once, and on a fresh dtype with the state
  numpy writes for a number type (byte order only: a state that changes a dtype's flags, fields or size is
  refused). Instantiating classes (``INST``, ``OBJ``, ``NEWOBJ``) is refused.

The file is read into memory first (it cannot claim more than it holds), so a loaded pickle takes about its
file's size in arrays plus the Python objects its opcodes make.
"""
from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ._text import first_line
from .errors import InvalidOptionError, UnsafeFileError

__all__ = ["NUMPY_ARRAY_GLOBALS", "load_pickle_restricted"]

_NUMBER_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex numbers
_MAX_DIMS = 32


class _Refused(Exception):
    """A checked stand-in of an admitted global refused its arguments, or an opcode was refused."""


def _refuse(what: str):
    raise _Refused(what)


class _Admitted:
    """An admitted global: calls go to a checked function; a BUILD on it is refused (no state to change)."""

    __slots__ = ("_call", "_name")

    def __init__(self, call, name: str):
        self._call, self._name = call, name

    def __call__(self, *args):
        return self._call(*args)

    def __setstate__(self, state):
        _refuse(f"a BUILD (__setstate__) applied to {self._name}")

    def __repr__(self) -> str:
        return self._name


def _number_dtype(dt) -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.hasobject or dt.kind not in _NUMBER_KINDS or dt.fields is not None \
            or dt.subdtype is not None:
        _refuse(f"an array of dtype {dt} (only arrays of numbers - bool, integers, floats, complex - are admitted)")
    return dt


def _shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > _MAX_DIMS or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        _refuse(f"an array of shape {shape!r:.80} (expected a tuple of at most {_MAX_DIMS} non-negative ints)")
    return shape


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy.core.multiarray._reconstruct (numpy._core... in numpy 2)
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy._core.numeric._frombuffer (pickle protocol 5)


class _ArrayGlobals:
    """The admitted numpy globals of one unpickling, bound to its byte budget and its fresh objects."""

    def __init__(self, budget: int):
        self.budget = budget  # bytes the arrays may still take: what the file holds
        self.fresh_arrays: dict[int, np.ndarray] = {}  # made by _reconstruct, not yet given their state
        self.fresh_dtypes: dict[int, np.dtype] = {}  # made by numpy.dtype, state not yet set

    def charge(self, nbytes: int) -> None:
        if nbytes > self.budget:
            _refuse(f"arrays that claim more bytes than the file holds ({nbytes:,} bytes for one array, "
                    f"{self.budget:,} left of the file's size)")
        self.budget -= nbytes

    def reconstruct(self, cls, shape, typecode):
        if cls is not NDARRAY:
            _refuse(f"_reconstruct of {cls!r:.60} (only numpy.ndarray is admitted)")
        if shape != (0,) or typecode not in (b"b", "b"):
            _refuse(f"_reconstruct{(shape, typecode)!r:.60} (numpy writes _reconstruct(ndarray, (0,), b'b'))")
        array = _RECONSTRUCT(np.ndarray, (0,), b"b")
        self.fresh_arrays[id(array)] = array
        return array

    def dtype(self, *args):
        if not 1 <= len(args) <= 3 or not isinstance(args[0], (str, bytes)):
            _refuse(f"numpy.dtype{args!r:.60} (expected a type code such as 'u1')")
        try:
            dt = np.dtype(args[0] if isinstance(args[0], str) else args[0].decode("ascii"))
        except (TypeError, ValueError, UnicodeDecodeError):
            _refuse(f"numpy.dtype({args[0]!r:.40})")
        _number_dtype(dt)
        dt = np.dtype(dt, copy=True)  # a fresh descriptor: a BUILD never reaches numpy's shared ones
        self.fresh_dtypes[id(dt)] = dt
        return dt

    def build_dtype(self, dt: np.dtype, state) -> None:
        """The BUILD numpy writes after a dtype: ``(3, byteorder, None, None, None, -1, -1, flags)``."""
        self.fresh_dtypes.pop(id(dt))
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
              and state[1] in ("<", ">", "|", "=", b"<", b">", b"|", b"=") and state[2:5] == (None, None, None)
              and state[5:7] == (-1, -1) and state[7] == dt.flags and (len(state) == 8 or state[8] is None))
        if not ok:
            _refuse(f"a dtype state {state!r:.100} that is not the one numpy writes for {dt} (it would change "
                    f"the dtype's flags, fields or size)")
        order = state[1].decode() if isinstance(state[1], bytes) else state[1]
        dt.__setstate__((3, order, None, None, None, -1, -1, dt.flags))
        _number_dtype(dt)

    def build_array(self, array: np.ndarray, state) -> None:
        """The BUILD numpy writes after ``_reconstruct``: ``(1, shape, dtype, is_fortran, raw bytes)``."""
        del self.fresh_arrays[id(array)]
        if isinstance(state, tuple) and len(state) == 4:
            state = (1,) + state
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            _refuse(f"an array state {state!r:.80} (expected (1, shape, dtype, is_fortran, bytes))")
        _, shape, dt, fortran, raw = state
        shape, dt = _shape(shape), _number_dtype(dt)
        if id(dt) in self.fresh_dtypes or not isinstance(fortran, bool) \
                or not isinstance(raw, (bytes, bytearray)):
            _refuse(f"an array state with dtype {dt}, is_fortran {fortran!r:.20} and data of type "
                    f"{type(raw).__name__} (expected a dtype, a bool and the array's bytes)")
        nbytes = math.prod(shape) * dt.itemsize
        if len(raw) != nbytes:
            _refuse(f"an array of shape {shape} and dtype {dt} ({nbytes:,} bytes) over {len(raw):,} bytes of data")
        self.charge(nbytes)
        array.__setstate__((1, shape, dt, fortran, raw))

    def frombuffer(self, buffer, dtype, shape, order):
        dt, shape = _number_dtype(dtype), _shape(shape)
        if id(dt) in self.fresh_dtypes or not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
            _refuse(f"_frombuffer of a {type(buffer).__name__} with order {order!r:.10} (expected an in-band "
                    f"buffer, a dtype and 'C' or 'F')")
        nbytes = math.prod(shape) * dt.itemsize
        if len(buffer) != nbytes:
            _refuse(f"an array of shape {shape} and dtype {dt} ({nbytes:,} bytes) over {len(buffer):,} bytes of "
                    f"data")
        self.charge(nbytes)
        return _FROMBUFFER(buffer, dt, shape, order)


class _NdarrayClass:
    """What the global ``numpy.ndarray`` resolves to: an argument of ``_reconstruct``, never called itself."""

    __slots__ = ()

    def __call__(self, *args):
        _refuse("a direct call of numpy.ndarray(...) (it can give an array any strides, so that a few bytes claim "
                "gigabytes; arrays are admitted only through numpy's own _reconstruct and __setstate__)")

    def __setstate__(self, state):
        _refuse("a BUILD (__setstate__) applied to numpy.ndarray")

    def __repr__(self) -> str:
        return "numpy.ndarray"


NDARRAY = _NdarrayClass()


def _latin1(text, encoding):
    if not isinstance(text, str) or encoding != "latin1":
        _refuse(f"_codecs.encode({type(text).__name__}, {encoding!r:.20}) (only the latin1 bytes of protocol 2)")
    return text.encode("latin1")


#: The globals a pickle of numpy arrays of numbers (and of bytes, under protocol 0 and 2) needs, by name; each
#: resolves to a checked stand-in bound to the unpickling (see the module docstring).
NUMPY_ARRAY_GLOBALS = {
    **{(core + ".multiarray", "_reconstruct"): "reconstruct" for core in ("numpy.core", "numpy._core")},
    **{(core + ".numeric", "_frombuffer"): "frombuffer" for core in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): _latin1,
}

_REFUSED_OPCODES = {pickle.INST: "INST", pickle.OBJ: "OBJ", pickle.NEWOBJ: "NEWOBJ", pickle.NEWOBJ_EX: "NEWOBJ_EX"}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD can be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, allowed: dict, path: Path, what: str, budget: int):
        super().__init__(file, encoding="bytes")
        self.allowed, self.path, self.what = allowed, path, what
        self.arrays = _ArrayGlobals(budget)

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise UnsafeFileError(
                f"{self.path} holds a pickled {module}.{name}, which a {self.what} never contains; the file was not "
                f"loaded, because unpickling it could run arbitrary code. Use the original files of the data set")
        if isinstance(found, str):  # a stand-in bound to this unpickling's budget
            return _Admitted(getattr(self.arrays, found), f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        raise UnsafeFileError(f"{self.path} holds a persistent reference ({pid!r:.60}), which a {self.what} never "
                              f"contains; the file was not loaded")

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.ndarray) and self.arrays.fresh_arrays.get(id(inst)) is inst:
            self.arrays.build_array(inst, state)
        elif isinstance(inst, np.dtype) and self.arrays.fresh_dtypes.get(id(inst)) is inst:
            self.arrays.build_dtype(inst, state)
        elif isinstance(inst, (_Admitted, _NdarrayClass)):
            inst.__setstate__(state)
        else:
            _refuse(f"a BUILD (__setstate__) applied to a {type(inst).__name__} (only a fresh numpy array or dtype "
                    f"takes one, once)")

    dispatch[pickle.BUILD[0]] = load_build

    def _refused_opcode(self):
        _refuse("an instruction that instantiates a class (INST, OBJ or NEWOBJ)")

    for _code in _REFUSED_OPCODES:
        dispatch[_code[0]] = _refused_opcode
    del _code


def load_pickle_restricted(path: str | os.PathLike, *, what: str, allowed: dict | None = None) -> Any:
    """Unpickle a data file admitting only the globals in ``allowed`` (default :data:`NUMPY_ARRAY_GLOBALS`).

    Plain values (dicts, lists, tuples, str, bytes, numbers) need no global; anything else - a class, a
    function such as ``os.system`` or ``exec`` - is refused before it is called. numpy arrays are admitted
    only as the module docstring says, and their bytes together must fit in the file.

    Args:
        path: the pickle file.
        what: the file's format, for messages ("CIFAR-10 batch").
        allowed: ``{(module, name): object}``: what each admitted global resolves to (the strings of
            :data:`NUMPY_ARRAY_GLOBALS` name the checked numpy stand-ins).

    Returns:
        The unpickled object (``bytes`` for Python 2 ``str``, as ``encoding="bytes"`` reads them).

    Raises:
        UnsafeFileError: the pickle names a global outside ``allowed``, or holds an array or an instruction
            that is not admitted (the message names it and the file).
        ValueError: the file is damaged or not a pickle.
    """
    path = Path(path)
    allowed = NUMPY_ARRAY_GLOBALS if allowed is None else allowed
    data = path.read_bytes()  # a pickle cannot make a read claim more than the file holds
    try:
        return _RestrictedUnpickler(io.BytesIO(data), allowed, path, what, budget=len(data)).load()
    except UnsafeFileError:
        raise
    except _Refused as exc:
        raise UnsafeFileError(f"{path} holds {exc}, which a {what} never contains; the file was not loaded") from None
    except Exception as exc:  # noqa: BLE001 - truncation and garbage fail in many ways
        raise InvalidOptionError(
            f"{path} is not a readable pickle ({type(exc).__name__}: {first_line(exc)}); the {what} "
            f"is damaged") from exc
