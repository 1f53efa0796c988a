"""Policy files in: YAML or JSON text read safely and validated into a Policy, or a PolicyError
naming each bad field and value."""

from __future__ import annotations

import difflib
import errno
import json
import os
import stat
from collections.abc import Hashable, Iterable
from typing import Any, get_args

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails

from hyperion.errors import PolicyError
from hyperion.policy.model import Policy
from hyperion.policy.problems import Location, Problem, ProblemListError, kind_of, show_value

MAX_PROBLEMS = 50  # a policy with thousands of bad entries should not flood the terminal

# YAML aliases may add at most this many nodes to a document (beyond its own): a "billion laughs"
# document is a few hundred bytes that expand to 10^9 nodes.
MAX_ALIAS_EXPANSION = 1_000_000

# libyaml's parser when PyYAML was built with it: ~20x faster, which is what makes a
# million-entry policy load in seconds rather than a minute. Same safe semantics.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """safe_load semantics, but a key repeated in one mapping is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            # Merge keys (<<) may legitimately be overridden; complex keys are rejected later.
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node, deep=False)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {show_value(key)} (first defined on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        mapping: dict[Hashable, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer int() refuses (more digits than sys.get_int_max_str_digits()) is a YAML error."""
        try:
            return int(super().construct_yaml_int(node))
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer of {len(node.value)} characters is too long", node.start_mark
            ) from None

    def get_single_data(self) -> Any:
        """Composes the document, refuses alias bombs and recursive aliases, then constructs it."""
        node = self.get_single_node()
        if node is None:
            return None
        if getattr(self, "has_anchors", True):  # no anchor, no alias: skip the walk (large policies)
            _check_aliases(node)
        return self.construct_document(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _check_aliases(root: yaml.Node) -> None:
    """Counts the nodes of the document with every alias expanded (each distinct node once,
    shared ones by reference): more than MAX_ALIAS_EXPANSION beyond its distinct nodes, or an
    alias inside its own anchor, is an error. Iterative: libyaml allows 1000 levels of nesting."""
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if children_done:
            open_nodes.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in children)
            if expanded[key] - len(expanded) > MAX_ALIAS_EXPANSION:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand the document beyond {MAX_ALIAS_EXPANSION:,} more nodes "
                    "(an alias bomb?)", node.start_mark)
            continue
        if key in expanded:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise yaml.constructor.ConstructorError(
                    None, None, "an alias refers to a node that contains it (recursive document)", child.start_mark)
            if id(child) not in expanded:
                stack.append((child, False))


class _DuplicateJsonKeyError(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a repeated key is an error, as in YAML documents."""
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _DuplicateJsonKeyError(f"duplicate key {show_value(key)}")
        mapping[key] = value
    return mapping


def _load_yaml(text: str) -> object:
    """yaml.safe_load with the duplicate-key check.

    A document that is plain JSON (YAML's subset) is parsed by the json module
    first: generated million-entry blocklists load in a fraction of YAML's time.
    """
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_json_object)
        except _DuplicateJsonKeyError as exc:
            raise yaml.YAMLError(str(exc)) from None
        except ValueError:
            pass  # YAML flow style such as {mode: monitor}: not JSON, parse as YAML
    loader = _StrictLoader(text)
    loader.has_anchors = "&" in text
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _invalid(source: str, lines: list[str]) -> PolicyError:
    count = len(lines)
    if count > MAX_PROBLEMS:
        lines = [*lines[:MAX_PROBLEMS], f"... and {count - MAX_PROBLEMS} more problems"]
    noun = "problem" if count == 1 else "problems"
    return PolicyError("\n  ".join([f"{source}: invalid policy ({count} {noun})", *lines]))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(p for p in (exc.context, exc.problem) if p) or "YAML error"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
        return what
    return f"YAML error: {exc}"


def _format_loc(loc: Iterable[str | int]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def _model_at(loc: Location) -> type[BaseModel] | None:
    """The model class whose field list applies at ``loc`` (for "allowed keys" hints)."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _error_lines(error: ErrorDetails) -> list[Problem]:
    """Turn one pydantic error into (location, message) lines a network engineer can act on."""
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if kind == "value_error" and isinstance(cause, ProblemListError):
        return [(loc + sub, message) for sub, message in cause.problems]
    if kind == "value_error" and cause is not None:
        return [(loc, str(cause))]
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        return [(loc, f"{show_value(value)} is not one of {expected}")]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        model = _model_at(loc[:-1])
        if model is None:
            return [(loc, "unknown key")]
        allowed = [f.alias or n for n, f in model.model_fields.items()]
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [(loc, f"unknown key; {hint}allowed keys: {', '.join(allowed)}")]
    if kind == "invalid_key":
        return [(loc[:-1], f"key {show_value(value)} is {kind_of(value)}; keys must be names")]
    if kind == "missing":
        return [(loc, "required key is missing")]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [(loc, f"{show_value(value)} is {kind_of(value)}, expected a mapping")]
    if kind in ("tuple_type", "list_type"):
        return [(loc, f"{show_value(value)} is {kind_of(value)}, expected a list")]
    return [(loc, f"{show_value(value)}: {error['msg']}")]


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; ``source`` (usually the path) prefixes every error."""
    try:
        document = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise _invalid(source, [_yaml_problem(exc)]) from None
    except RecursionError:
        raise _invalid(source, ["document is nested too deeply"]) from None
    except UnicodeEncodeError as exc:  # a str argument with a lone surrogate (never from a UTF-8 file)
        raise _invalid(source, [f"not valid Unicode text ({exc.reason} at {exc.start})"]) from None
    if document is None:
        raise _invalid(source, ["policy file is empty (use {} for a policy that blocks nothing)"])
    if not isinstance(document, dict):
        raise _invalid(
            source, [f"top level is {kind_of(document)}, expected a mapping (e.g. mode: enforce)"]
        )
    try:
        # by_name=False: the file must say "class" and "ttl", not the Python names.
        return Policy.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:
        lines = [
            f"{_format_loc(loc)}: {message}"
            for error in exc.errors()
            for loc, message in _error_lines(error)
        ]
        raise _invalid(source, lines) from None
    except RecursionError:
        raise _invalid(source, ["document is nested too deeply"]) from None


MAX_SYMLINKS = 40  # as the kernel's path walk allows


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


def _who(mode: int) -> str:
    return " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)


def _mode(mode: int) -> str:
    return f"0{stat.S_IMODE(mode):03o}"


def _untrusted_owner(st: os.stat_result) -> str | None:
    euid = os.geteuid()
    if st.st_uid in (0, euid):
        return None
    return f"owned by uid {st.st_uid}, not root or this process's user (uid {euid}"


def _check_directory(source: str, name: str, fd: int, st: os.stat_result, holds_the_file: bool) -> None:
    """A directory the lookup passes through: whoever can write it can swap what is below it."""
    owner = _untrusted_owner(st)
    if owner:
        raise PolicyError(f"{source}: refusing a policy in directory {name}, {owner})")
    if not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return
    if os.fstatvfs(fd).f_flag & os.ST_RDONLY:
        return  # a read-only mount (a Kubernetes ConfigMap volume): nobody writes it, whatever the bits
    if st.st_mode & stat.S_ISVTX and st.st_uid == 0 and not holds_the_file:
        # Like /tmp: others may add names but not rename or remove ours, and the next directory
        # down is checked too. As the policy's own directory it is refused: anyone could have
        # made the name first, or the siblings a ..data layout resolves through.
        return
    hint = ("a shared directory: keep the policy in a directory of its own" if st.st_mode & stat.S_ISVTX
            else f"chmod go-w {name}")
    raise PolicyError(f"{source}: refusing a policy in directory {name}, writable by {_who(st.st_mode)} "
                      f"(mode {_mode(st.st_mode)}; {hint})")


def _not_regular(source: str, st: os.stat_result) -> PolicyError:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
    return PolicyError(f"{source}: refusing a policy that is not a regular file ({kind})")


def _open_trusted(source: str) -> int:
    """Resolves `source` one name at a time from /, on descriptors (O_PATH, O_NOFOLLOW), so that
    each directory checked is the one the next name is looked up in, and symlinks (the Kubernetes
    ..data layout) are followed deliberately rather than by the kernel. Every directory a name is
    looked up in, those holding the symlinks included, must be trusted (_check_directory).
    Returns a descriptor of the final file, opened with O_NOFOLLOW; the file's own checks are the
    caller's, on that descriptor. OSError for what the kernel would say."""
    pending = [part for part in reversed(os.path.abspath(source).split("/")) if part]  # next name last
    names: list[str] = []  # the physical path so far, for messages
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    looked_up_in: list[tuple[str, int, os.stat_result]] = []
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd, names = parent, names[:-1]
                continue
            looked_up_in.append(("/" + "/".join(names), os.dup(fd), os.fstat(fd)))
            child = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            st = os.fstat(child)
            if stat.S_ISLNK(st.st_mode):
                try:
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    target = os.readlink("", dir_fd=child)  # the link this descriptor holds
                finally:
                    os.close(child)
                pending.extend(part for part in reversed(target.split("/")) if part)
                if target.startswith("/"):
                    os.close(fd)
                    fd, names = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), []
                continue
            if pending:
                if not stat.S_ISDIR(st.st_mode):
                    os.close(child)
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                os.close(fd)
                fd = child
                names.append(name)
                continue
            os.close(child)
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(source, st)
            for i, (dir_name, dir_fd, dir_st) in enumerate(looked_up_in):
                _check_directory(source, dir_name, dir_fd, dir_st, holds_the_file=i == len(looked_up_in) - 1)
            # O_NONBLOCK: should the name have become a FIFO meanwhile, the open does not wait.
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, dir_fd=fd)
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))  # the path names a directory (or /)
    finally:
        os.close(fd)
        for _, dir_fd, _ in looked_up_in:
            os.close(dir_fd)


def _read_trusted(source: str) -> bytes:
    """The policy's bytes, read from the one descriptor whose owner and mode were checked."""
    fd = _open_trusted(source)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(source, st)
        owner = _untrusted_owner(st)
        if owner:
            raise PolicyError(f"{source}: refusing a policy file {owner}; chown root {source})")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PolicyError(f"{source}: refusing a policy file writable by {_who(st.st_mode)}, not only its "
                              f"owner (mode {_mode(st.st_mode)}; chmod go-w {source})")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_policy(path: str | os.PathLike[str]) -> tuple[Policy, str]:
    """Read and validate a policy file; returns it with its text (kept to diff against later).

    Trust first: the file and every directory its lookup passes through must be owned by root or
    this process's user and writable by nobody else (see _open_trusted); the text is read from the
    descriptor that was checked, so a swap of the path meanwhile cannot slip other content in."""
    source = os.fspath(path)
    try:
        text = _read_trusted(source).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"{source}: cannot read policy file: not valid UTF-8 (byte offset {exc.start})"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError(f"{source}: cannot read policy file: {reason}") from None
    return parse_policy(text, source), text


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file; I/O and encoding failures are PolicyErrors too."""
    return read_policy(path)[0]
