"""What travels by value: dill's picklers, for what pickle cannot send by name.

Imported at first use (see ``wire._by_value``): a lambda, a closure, a local
class or a ``__main__`` class or function defined after the node started, in
a message or a process body. dill costs a process about 25 ms to import and
1.6 MiB of memory, which a program that sends only what pickle can name never
pays, nor does any process forked from its zygote.
"""

from __future__ import annotations

import importlib
import io
import sys
import types
from typing import Any

import dill

from .wire import _importable_main


class _Dispatch(dict):
    """A dispatch table as dill's own (a copy of which would be a plain dict):
    a class whose metaclass is not ``type`` (ABCMeta...) is saved as a class,
    else pickle would send it by name."""

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            if isinstance(key, type) and issubclass(key, type):
                return self[type]
            return default


class _BodyPickler(dill.Pickler):
    """dill, except that imported modules travel by reference.

    dill ships a module that is not under the interpreter's prefix by value,
    whole ``__dict__`` included (so an editable install or a test helper module
    would be copied, and fail on its first unpicklable global). Every process
    of a node can import what the program imported, so a name is enough.
    """

    dispatch = _Dispatch(dill.Pickler.dispatch)


def _save_module(pickler: Any, module: types.ModuleType) -> None:
    if module.__name__ == "__main__" or sys.modules.get(module.__name__) is not module:
        _dill_save_module(pickler, module)
    else:
        pickler.save_reduce(importlib.import_module, (module.__name__,), obj=module)


_dill_save_module = _BodyPickler.dispatch[types.ModuleType]
_BodyPickler.dispatch[types.ModuleType] = _save_module


class _MessagePickler(_BodyPickler):
    """dill for messages: a ``__main__`` class or function that every process
    can import (it existed when the node started) goes by name, as pickle
    would send it; a newer one goes by value. Modules go by name."""

    dispatch = _Dispatch(_BodyPickler.dispatch)


def _by_name_if_importable(dill_save: Any) -> Any:
    def save(pickler: Any, obj: Any) -> None:
        if getattr(obj, "__module__", None) == "__main__" and _importable_main(obj):
            pickler.save_global(obj)
        else:
            dill_save(pickler, obj)
    return save


for _t in (type, types.FunctionType):
    _MessagePickler.dispatch[_t] = _by_name_if_importable(_MessagePickler.dispatch[_t])


def dumps_message(term: Any) -> bytes:
    """A message by value where needed (see _MessagePickler)."""
    out = io.BytesIO()
    _MessagePickler(out, protocol=5, recurse=True).dump(term)
    return out.getvalue()


def dumps_body(fn_args: Any) -> bytes:
    """A process body ``(fn, args, kwargs)``, ``__main__`` functions by value."""
    out = io.BytesIO()
    _BodyPickler(out, protocol=5, recurse=True).dump(fn_args)
    return out.getvalue()


def loads(body: Any) -> Any:
    return dill.loads(body)
