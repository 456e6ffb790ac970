"""``python -m autoscaler.rules [--check]``: write the rule files from the policy's constants,
or (``--check``) exit 1 when a committed file differs from what would be written."""

from __future__ import annotations

import argparse
import sys

from autoscaler.rules import rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoscaler.rules", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        names = ", ".join(str(p) for p in stale)
        print(f"out of date: {names}; run `python -m autoscaler.rules`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
