"""A griffe extension that renders the reST habits of smoothjax's docstrings as Markdown.

The docstrings are Google style, with three reST idioms that Markdown does not know:

* Sphinx roles (``:func:`pgd```, ``:class:`Dataset```, ``:mod:`...```, ``:meth:``, ``:data:``,
  ...) become inline code (``pgd``).
* ``Example:`` (Google's singular title, which griffe reads as an admonition) becomes an
  ``Examples:`` section, so that ``>>>`` lines render as code.
* A paragraph ending in ``::`` followed by an indented block becomes a fenced code block.

Only the rendering changes: the docstrings in the source are left as they are.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const|ref):`~?([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


def _fence_literal_blocks(text: str) -> str:
  lines = text.split("\n")
  out: list[str] = []
  i = 0
  while i < len(lines):
    line = lines[i]
    stripped = line.rstrip()
    if stripped.endswith("::") and not stripped.lstrip().startswith((">>>", "...")):
      indent = len(line) - len(line.lstrip())
      pad = " " * indent
      if line.lstrip().startswith(("* ", "- ")):
        indent += 2  # a list item's text starts after its bullet
      j = i + 1
      while j < len(lines) and not lines[j].strip():
        j += 1
      block_start = j
      while j < len(lines) and (not lines[j].strip()
                                or len(lines[j]) - len(lines[j].lstrip()) > indent):
        j += 1
      while j > block_start and not lines[j - 1].strip():
        j -= 1
      block = lines[block_start:j]
      if block:
        text_part = stripped[:-1] if stripped[:-2].strip() else ""
        if text_part:
          out.append(text_part)
          out.append("")
        body_indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        out.append(pad + "```")
        out.extend(pad + b[body_indent:] if b.strip() else "" for b in block)
        out.append(pad + "```")
        i = j
        continue
    out.append(line)
    i += 1
  return "\n".join(out)


def convert(text: str) -> str:
  """Returns ``text`` with the three reST idioms rewritten as Markdown."""
  text = _ROLE.sub(r"`\1`", text)
  text = _EXAMPLE.sub(r"\1Examples:", text)
  return _fence_literal_blocks(text)


class RstToMarkdown(griffe.Extension):
  """Rewrites each object's docstring with :func:`convert` before it is parsed."""

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
    del kwargs
    if obj.docstring is not None:
      obj.docstring.value = convert(obj.docstring.value)
