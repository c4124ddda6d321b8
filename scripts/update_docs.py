#!/usr/bin/env python3
"""Rewrite the option tables of the docs and the key list of configs/batch-example.yaml from kandinsky_cli/options.py.

    python scripts/update_docs.py          # rewrite in place
    python scripts/update_docs.py --check  # exit 1 if a file differs from what the schema gives

The docs (README.md and docs/*.md) hold one generated table per scope between ``<!-- options:SCOPE -->`` and
``<!-- /options -->``, each in one file; the example batch file holds the job keys between ``# <job-keys>`` and
``# </job-keys>``. tests/test_options.py fails when either differs from the schema.
"""
import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kandinsky_cli import options  # noqa: E402
from kandinsky_cli.cli import PRIOR_ALIASES  # noqa: E402

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLE = REPO / "configs" / "batch-example.yaml"


def docs_text(text: str) -> str:
    for scope in re.findall(r"<!-- options:(\w+) -->", text):
        begin, end = options.table_markers(scope)
        aliases = PRIOR_ALIASES if scope == options.PRIOR else None
        text = options.replace_between(text, begin, end, options.markdown_table(scope, aliases))
    return text


def example_text(text: str) -> str:
    return options.replace_between(text, *options.YAML_MARKERS, options.yaml_key_docs())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args()
    stale = []
    for path, render in [(doc, docs_text) for doc in DOCS] + [(EXAMPLE, example_text)]:
        old = path.read_text(encoding="utf-8")
        new = render(old)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(REPO)}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
