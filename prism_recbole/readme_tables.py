"""Rewrite (or check) the Markdown tables of a document that are rendered by a command.

    python -m prism_recbole.readme_tables README.md            # rewrite the tables
    python -m prism_recbole.readme_tables README.md --check    # only compare; exit 1 if stale

A table is marked by an HTML comment on the line right above it (invisible on GitHub) that
names the command rendering it, e.g.

    <!-- table: python -m prism_recbole.results_table docs/results/comparison-toys.csv --first PRISM_SASRec -->
    | model | training | ... |
    |---|---|...|

The command is one of RENDERERS (``prism_recbole.results_table``, ``prism_recbole.goal``); it
runs in this process with the document's directory as the working directory, and its table
replaces the lines starting with ``|`` below the marker.  So README's result tables are what
the named command prints from the CSVs in ``docs/results/``, and ``--check`` (a test runs it)
catches a CSV that changed without its table.  Errors name the document's line.
"""

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import sys

RENDERERS = ("prism_recbole.results_table", "prism_recbole.goal")
MARKER = re.compile(r"^<!-- table: python -m (\S+)(.*?) -->\s*$")


class TableError(ValueError):
    pass


def _render(module_name, argv, where):
    if module_name not in RENDERERS:
        raise TableError(f"{where}: {module_name} is not a table command (one of {', '.join(RENDERERS)})")
    module = importlib.import_module(module_name)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return module.render(argv).strip("\n")
    except SystemExit:  # argparse's error: keep its message, name the line
        message = err.getvalue().strip().splitlines()
        raise TableError(f"{where}: {module_name} {' '.join(argv)}: "
                         f"{message[-1] if message else 'failed'}") from None


def sync(path, check=False):
    """Render every marked table of ``path``; returns ``(text, stale)``: the new text and the
    line numbers of the tables that changed.  Writes the file unless ``check``."""
    with open(path) as f:
        lines = f.read().split("\n")
    out, stale, i = [], [], 0
    cwd = os.getcwd()
    os.chdir(os.path.dirname(os.path.abspath(path)))  # the commands' paths are the document's
    try:
        while i < len(lines):
            line = lines[i]
            out.append(line)
            match = MARKER.match(line)
            i += 1
            if not match:
                continue
            where = f"{path}:{i}"
            try:
                argv = shlex.split(match.group(2))
            except ValueError as e:
                raise TableError(f"{where}: cannot parse the command: {e}") from None
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            if end == i:
                raise TableError(f"{where}: no table (lines starting with '|') below the marker")
            table = _render(match.group(1), argv, where).split("\n")
            if table != lines[i:end]:
                stale.append(i + 1)
            out.extend(table)
            i = end
    finally:
        os.chdir(cwd)
    text = "\n".join(out)
    if not check and stale:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return text, stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("document", help="a Markdown file, e.g. README.md")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a table differs from its command's output")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.document):
        parser.error(f"no such file: {args.document}")
    try:
        _, stale = sync(args.document, check=args.check)
    except TableError as e:
        parser.error(str(e))
    where = ", ".join(f"line {n}" for n in stale)
    if args.check:
        if stale:
            print(f"{args.document}: stale tables at {where}; "
                  f"run python -m prism_recbole.readme_tables {args.document}", file=sys.stderr)
            sys.exit(1)
        print(f"{args.document}: every marked table is up to date")
    else:
        print(f"{args.document}: rewrote {len(stale)} table(s){' at ' + where if stale else ''}")
    return stale


if __name__ == "__main__":
    main()
