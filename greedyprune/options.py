"""Typed option objects shared by the pruners: frozen, keyword-only dataclasses whose fields carry their help.

A pruner's tuning options are declared once, as the fields of one dataclass (:class:`~greedyprune.channels.
PruneOptions`, :class:`~greedyprune.transformers.TransformerPruneOptions`): each field made by :func:`option`
holds its default and its help text (``field.metadata["help"]``). The pruner takes ``options=`` (an instance)
and ``**overrides`` (the same names as keywords, checked by :func:`with_overrides`); the command line builds its
flags from the same fields and help; :func:`document_fields` appends the help to the class docstring.
:func:`renamed_fields` keeps a renamed field's old name working for a release, with a ``DeprecationWarning``.
"""
from __future__ import annotations

import difflib
import functools
import re
import textwrap
import warnings
from dataclasses import MISSING, field, fields, replace
from .errors import InvalidTypeError

__all__ = ["document_fields", "field_help", "option", "plain_help", "renamed_fields", "with_overrides"]


def option(default, help: str):
    """A dataclass field with ``default`` and its ``help`` (one text, Sphinx roles and ``code`` allowed)."""
    return field(default=default, metadata={"help": " ".join(help.split())})


def field_help(cls, name: str) -> str:
    """The help text of field ``name`` of an option dataclass, as written (see :func:`plain_help`)."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def plain_help(text: str) -> str:
    """``text`` without reStructuredText markup: ``:func:`~a.b.c``` -> ``c``, ````code```` -> ``code``
    (for command-line help)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return " ".join(text.replace("``", "").split())


def with_overrides(cls, options, overrides: dict, caller: str):
    """``options`` (an instance of ``cls``, or None for the defaults) with the fields named in ``overrides``
    replaced. A name that is no field raises ``TypeError`` as Python does for an unexpected keyword argument of
    ``caller``, with the close matches; ``options`` of another type raises ``TypeError`` too. A field's former
    name (:func:`renamed_fields`) is accepted with a ``DeprecationWarning`` pointing at ``caller``'s caller."""
    overrides = _renamed(cls, overrides, caller, stacklevel=4)
    if options is None:
        options = cls()
    elif not isinstance(options, cls):
        raise InvalidTypeError(f"{caller}() options must be a {cls.__name__}, got {type(options).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = [key for key in overrides if key not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
            f" (its options are the fields of {cls.__name__})"
        raise InvalidTypeError(f"{caller}() got an unexpected keyword argument {key!r}{hint}")
    return replace(options, **overrides) if overrides else options


def document_fields(cls):
    """Class decorator: append an ``Attributes:`` section built from the fields' help to ``cls.__doc__``."""
    lines = []
    for f in fields(cls):
        default = "" if f.default is MISSING else f" (default: {f.default!r})"
        body = textwrap.fill(f.metadata.get("help", "") + default, 100, initial_indent=" " * 8,
                             subsequent_indent=" " * 8)
        lines.append(f"    {f.name}:\n{body}")
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Attributes:\n" + "\n".join(lines) + "\n"
    return cls


def renamed_fields(note: str = "", /, **renamed: str):
    """Class decorator for an option dataclass whose fields ``renamed`` maps from their former names
    (``@renamed_fields(method="evaluator")``): for one release the old name is still accepted as a keyword of the
    constructor and of the functions that take the options as keywords (:func:`with_overrides`), and read as an
    attribute, each time with a ``DeprecationWarning`` that names the new spelling (and ``note``, why). Giving
    both names raises ``TypeError`` - so does :func:`dataclasses.replace` with the old one (it passes every
    field on), with a message that names the new one."""
    def decorate(cls):
        names = {f.name for f in fields(cls)}
        if not set(renamed.values()) <= names or set(renamed) & names:
            raise InvalidTypeError(f"renamed_fields: {renamed} must map former names to fields of {cls.__name__}")
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, **kwargs):
            init(self, **_renamed(cls, kwargs, cls.__name__, stacklevel=3))

        cls.__init__ = __init__
        cls.__renamed_fields__ = {old: (new, note) for old, new in renamed.items()}
        for old, new in renamed.items():
            setattr(cls, old, property(functools.partial(_read_renamed, old=old, new=new, note=note),
                                       doc=f"Deprecated: the former name of ``{new}``."))
        return cls

    return decorate


def _deprecation(owner: str, old: str, new: str, note: str, use: str) -> str:
    return (f"{owner}: {use} is deprecated: the option {old!r} is now called {new!r}, with the same values"
            f"{' (' + note + ')' if note else ''}; {use} will be removed in a future release")


def _renamed(cls, keywords: dict, caller: str, stacklevel: int) -> dict:
    """``keywords`` with the former field names of ``cls`` replaced by the new ones, warning once per name."""
    renamed = getattr(cls, "__renamed_fields__", {})
    if not renamed or not set(keywords) & set(renamed):
        return keywords
    out = dict(keywords)
    for old, (new, note) in renamed.items():
        if old in out:
            if new in out:
                raise InvalidTypeError(f"{caller}() got both {old}= and {new}=; {old} is the former name of {new}: "
                                       f"give {new}= only")
            warnings.warn(_deprecation(f"{caller}()", old, new, note, f"{old}="), DeprecationWarning,
                          stacklevel=stacklevel)
            out[new] = out.pop(old)
    return out


def _read_renamed(self, *, old: str, new: str, note: str):
    warnings.warn(_deprecation(type(self).__name__, old, new, note, f".{old}"), DeprecationWarning, stacklevel=2)
    return getattr(self, new)
