"""Griffe extension for the API page: the docstrings' Sphinx roles as inline code.

The docstrings cross-reference with Sphinx roles (``:class:`~pkg.Name```, ``:func:`load```), which Markdown would
show literally. This turns each into inline code of the name as written (the ``~`` dropped), before the docstring
is parsed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|const|ref):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
