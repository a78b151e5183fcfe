"""Configuration and small file helpers shared by every stage (the role of nanoGPT's configurator.py).

A stage declares its flags once, as a dataclass whose fields carry their help text:

    @dataclass
    class Config:
        steps: int = arg(200, "optimizer steps (0: derive from --epochs)")
        bf16: bool = arg(False, "bfloat16 autocast (GPU); CPU runs stay fp32")

    cfg = parse_config(Config, doc=__doc__)     # --steps 300 --bf16 / --no-bf16; --help lists every field

Flags are the field names in kebab case; the type is the default's type; a boolean gets a real on/off pair
(`--flag` / `--no-flag`), never `type=bool` (for which `--flag False` would be true). Help text is plain text:
a `%` in it is escaped here, so a stage writes "30 %" and argparse prints "30 %".

The writers are atomic: they write a temporary file next to the target and rename it into place, so a reader
(or a crash) never sees half a file. The temporary name carries the process id, so ranks that write the same
file at once do not trip over each other's temporary file.

Bad files. A checkpoint (model.CheckpointError) or dataset (data.episodes.DatasetError) that is missing, cut
short or not what was expected raises a `BadFileError` whose one-line message names the file; each stage's
main() is wrapped in `exits_on_bad_files("stage.py")`, which turns it into `SystemExit("stage.py: message")`:
the stage named is the one running, exit status 1, and no traceback.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
from dataclasses import field, fields


class BadFileError(Exception):
    """A file handed to a stage is missing, cut short or not what was expected; the message names it."""


def exits_on_bad_files(stage: str):
    """Decorator for a stage's main(): BadFileError -> SystemExit(f"{stage}: {message}") (one line, exit 1)."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except BadFileError as e:
                raise SystemExit(f"{stage}: {e}") from None
        return run
    return wrap


def arg(default, help: str):
    """A dataclass field that carries its --help text."""
    return field(default=default, metadata={"help": help})


def make_parser(cls, doc: str | None = None, skip: tuple = ()) -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per field of the dataclass `cls` (except those named in `skip`)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(cls):
        if f.name in skip:
            continue
        kw = dict(default=f.default, help=f.metadata["help"].replace("%", "%%"))   # argparse %-formats help
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction                         # --flag / --no-flag
        else:
            kw["type"] = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    return p


def parse_config(cls, argv=None, doc: str | None = None):
    """`cls` filled from the command line (argv: a list of strings, or None for sys.argv[1:])."""
    return cls(**vars(make_parser(cls, doc).parse_args(argv)))


# ----------------------------------------------------------------------------- atomic files
def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (temporary file in the same folder, then one rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj, indent: int = 1) -> None:
    """`obj` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_jsonl(path: str, rows) -> None:
    """One JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str, default=None):
    """The JSON objects of `path`, one a line (blank lines skipped), or `default` when it is missing or unreadable."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return default


def read_json(path: str, default=None):
    """The JSON in `path`, or `default` when it is missing or unreadable (a report tolerates absent runs)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default
