"""Reading a YAML file that may be hostile: ``yaml.safe_load`` semantics within fixed bounds.

:func:`load_yaml_bounded` gives what ``yaml.safe_load`` gives (plain scalars, lists and mappings) or one
:class:`UserError` line naming the file, and refuses quickly, before building anything big:

* files larger than :data:`MAX_BYTES` (checked before reading them, and the read itself is bounded);
* text that is not UTF-8, or holds characters YAML forbids (a NUL byte, ...);
* any explicit tag (``!!python/object``, ``!!binary``, ``!custom``, ...);
* more than :data:`MAX_ALIASES` aliases (``*name``), an alias inside the node it names, or more than
  :data:`MAX_NODES` nodes once every alias is expanded (the "billion laughs");
* collections nested deeper than :data:`MAX_DEPTH`;
* a key given twice in one mapping (``jobs.yaml: line 7: duplicate key 'prompt' (first at line 5)``),
  which ``yaml.safe_load`` would resolve silently by keeping the last value;
* a value PyYAML cannot convert (a date such as 2001-13-45, an integer of thousands of digits).

The checks run while PyYAML's pure-Python ``SafeLoader`` composes the document, event by event.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, NoReturn, Optional, Tuple, Union

import yaml

from .errors import UserError
from .files import PathLike

#: Largest file read, in bytes.
MAX_BYTES = 1024 * 1024
#: Most aliases (``*name``) in one document.
MAX_ALIASES = 100
#: Most nodes in a document with every alias expanded; without aliases MAX_BYTES allows fewer than this.
MAX_NODES = 1_000_000
#: Deepest nesting of lists and mappings.
MAX_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
_STANDARD_TAG_PREFIX = "tag:yaml.org,2002:"


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses tags, alias bombs, deep nesting and duplicate keys while composing."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self._file = name
        self._aliases = 0
        self._nodes = 0                                      # composed so far, aliases expanded
        self._depth = 0
        self._expanded_sizes: Dict[str, int] = {}            # anchor -> nodes of its node, aliases expanded
        self._keys_seen: Dict[yaml.MappingNode, Dict[Any, int]] = {}  # mapping -> key -> line

    def _refuse(self, mark: yaml.Mark, problem: str) -> NoReturn:
        raise UserError(f"{self._file}: line {mark.line + 1}, column {mark.column + 1}: {problem}")

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
            node = super().compose_node(parent, index)
        else:
            node = self._compose_checked(event, parent, index)
        if isinstance(parent, yaml.MappingNode) and index is None:  # PyYAML composes a key with index None
            self._check_new_key(parent, node)
        return node

    def _compose_checked(self, event: yaml.Event, parent: Optional[yaml.Node], index: Any) -> yaml.Node:
        """Compose a node that is not an alias: no tag, within the depth and node limits."""
        if event.tag is not None:
            tag = event.tag.replace(_STANDARD_TAG_PREFIX, "!!", 1)
            raise yaml.composer.ComposerError(None, None, f"tag {tag} is not allowed (only plain values, "
                                              f"lists and mappings)", event.start_mark)
        self._add_nodes(1, event.start_mark)
        nested = isinstance(event, yaml.CollectionStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                self._refuse(event.start_mark, f"lists and mappings nested deeper than {MAX_DEPTH} levels")
        before = self._nodes
        node = super().compose_node(parent, index)
        if nested:
            self._depth -= 1
            self._keys_seen.pop(node, None)
        if event.anchor is not None:
            self._expanded_sizes[event.anchor] = 1 + self._nodes - before
        return node

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        """An alias adds the expanded size of the node it names; an alias to an open node makes a cycle."""
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            self._refuse(event.start_mark, f"more than {MAX_ALIASES} aliases (*name)")
        if event.anchor in self.anchors and event.anchor not in self._expanded_sizes:
            self._refuse(event.start_mark, f"alias *{event.anchor} refers to a node that contains it")
        self._add_nodes(self._expanded_sizes.get(event.anchor, 0), event.start_mark)

    def _add_nodes(self, count: int, mark: yaml.Mark) -> None:
        self._nodes += count
        if self._nodes > MAX_NODES:
            self._refuse(mark, f"more than {MAX_NODES} values when its aliases (*name) are expanded")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's, with its ValueErrors (a date like 2001-13-45, an int of 5000 digits) located."""
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as e:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {node.value!r}: {e}",
                                                    node.start_mark) from None

    def _check_new_key(self, mapping: yaml.MappingNode, key_node: yaml.Node) -> None:
        """Refuse a key already seen in ``mapping`` (compared as constructed values, like a dict does)."""
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            return  # a list or mapping as a key is refused by the constructor; '<<' merges may repeat keys
        key = key_node.value if key_node.tag == _VALUE_TAG else self.construct_object(key_node)
        seen = self._keys_seen.setdefault(mapping, {})
        line = key_node.start_mark.line + 1
        if key in seen:
            raise UserError(f"{self._file}: line {line}: duplicate key {key!r} (first at line {seen[key]})")
        seen[key] = line


def _line_and_column(text: Union[str, bytes], offset: int) -> Tuple[int, int]:
    """1-based line and column of ``text[offset]``."""
    newline = b"\n" if isinstance(text, bytes) else "\n"
    line_start = text.rfind(newline, 0, offset) + 1
    return text.count(newline, 0, offset) + 1, offset - line_start + 1


def _read_bounded(path: Path, what: str) -> str:
    """The file's text: UserError if it is missing, larger than MAX_BYTES or not UTF-8."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{path}: too large for a {what} ({size} bytes; the limit is {MAX_BYTES} bytes)")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"{path}: too large for a {what} (more than the limit of {MAX_BYTES} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = _line_and_column(data, e.start)
        raise UserError(f"cannot read {what} {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at line "
                        f"{line}, column {column})") from None


def _syntax_error(path: Path, text: str, error: yaml.YAMLError) -> UserError:
    """``'f.yaml: invalid YAML at line L, column C: problem'`` for any PyYAML error."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        line, column = mark.line + 1, mark.column + 1
    elif isinstance(error, yaml.reader.ReaderError):  # a forbidden character: only its offset is known
        line, column = _line_and_column(text, error.position)
    else:
        line = None
    at = f" at line {line}, column {column}" if line is not None else ""
    said = [getattr(error, "context", None), getattr(error, "problem", None)]
    problem = ", ".join(part for part in said if part) or str(error).splitlines()[0]
    return UserError(f"{path}: invalid YAML{at}: {problem}")


def load_yaml_bounded(path: PathLike, what: str = "YAML file") -> Any:
    """``yaml.safe_load`` of a file within the limits of this module; a one-line UserError otherwise.

    ``what`` names the file in messages about reading it (``'batch file not found: ...'``).
    """
    path = Path(path)
    text = _read_bounded(path, what)
    loader = None
    try:
        loader = _BoundedLoader(text, str(path))
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise _syntax_error(path, text, e) from None
    finally:
        if loader is not None:
            loader.dispose()
