"""Reading benchmark files in their official formats, with errors that name file and line.

Every reader strips a UTF-8 byte-order mark (GLUE's MRPC files start with one) and
raises `SrlmError` pointing at `file:line` for a malformed record. TSV files are
split on tabs only, never parsed as CSV: GLUE sentences contain unbalanced quotes.
`find_file` resolves `--data FILE_OR_DIR` to one file for a split. `write_text_atomic` writes a
file that a later run may reuse, so that a kill mid-write never leaves a truncated one behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from srlm.errors import SrlmError


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise SrlmError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SrlmError(f"{path}: is a directory; give a file") from None
    with f:
        try:
            for i, line in enumerate(f, 1):
                yield i, line.rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise SrlmError(f"{path}: not UTF-8 text ({e}); convert the file to UTF-8") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is an error."""
    path = Path(path)
    for i, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SrlmError(
                f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno}); one JSON object per line is expected"
            ) from None
        if not isinstance(obj, dict):
            raise SrlmError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield i, obj


def read_texts(files) -> Iterator[str]:
    """Documents for tokenizer training and pretraining: each non-blank line of a text file, or the
    string "text" field of each line of a .jsonl file."""
    for name in files:
        path = Path(name)
        if path.suffix == ".jsonl":
            for i, obj in read_jsonl(path):
                if not isinstance(obj.get("text"), str):
                    raise SrlmError(f'{path}:{i}: expected an object with a string "text" field')
                yield obj["text"]
        else:
            yield from (line for _, line in _lines(path) if line.strip())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = "\n".join(line for _, line in _lines(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SrlmError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_tsv(path: str | Path, header: bool = True) -> tuple[list[str] | None, Iterator[tuple[int, list[str]]]]:
    """(header columns or None, iterator of (line number, fields)); blank lines are skipped."""
    path = Path(path)
    lines = _lines(path)
    cols = None
    if header:
        first = next(lines, None)
        if first is None:
            raise SrlmError(f"{path}: empty file; expected a header line")
        cols = [c.strip() for c in first[1].split("\t")]

    def rows():
        for i, line in lines:
            if line.strip():
                yield i, line.split("\t")

    return cols, rows()


def field(obj: dict[str, Any], names: tuple[str, ...], where: str) -> Any:
    """The first of `names` present in `obj`; an error naming `where` (file:line) when none is."""
    for n in names:
        if n in obj:
            return obj[n]
    raise SrlmError(
        f"{where}: missing field {names[0]!r}"
        + (f" (or {', '.join(map(repr, names[1:]))})" if len(names) > 1 else "")
        + f"; fields present: {', '.join(map(repr, obj)) or 'none'}"
    )


def find_file(data: str | Path, candidates: list[str], what: str, exts: tuple[str, ...] = ()) -> Path:
    """Resolve `--data`: a file is used as is; in a folder, the first of `candidates` that exists
    (names relative to the folder, globs allowed)."""
    p = Path(data)
    if p.is_file():
        return p
    if not p.exists():
        raise SrlmError(f"{p}: no such file or folder (given as data for {what})")
    for c in candidates:
        hits = sorted(h for h in p.glob(c) if h.is_file() and (not exts or h.name.endswith(exts)))
        if hits:
            return hits[0]
    raise SrlmError(
        f"{p}: no file for {what} in this folder; looked for {', '.join(candidates)}. "
        f"Pass the file itself with --data FILE"
    )


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, flushed, then renamed (`srlm.atomic`)."""
    from srlm.atomic import write_text_atomic as write

    write(path, text)
