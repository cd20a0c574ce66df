#!/usr/bin/env python3
"""Print a rule fixture block for line N of an audit log, ready to paste into patterns/*.toml.

usage: scripts/fixture.py FILE LINE fire|quiet [NOTE]
"""
import sys

path, line_no, expect = sys.argv[1], int(sys.argv[2]), sys.argv[3]
note = sys.argv[4] if len(sys.argv) > 4 else ""
with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
        if i == line_no:
            break
    else:
        sys.exit(f"{path} has fewer than {line_no} lines")
line = line.rstrip("\n")
assert "'''" not in line
print("[[rule.fixture]]")
print(f'expect = "{expect}"')
print(f'source = "{path}:{line_no}"')
if note:
    print(f"note = {note!r}".replace("'", '"'))
print(f"line = '''{line}'''")
print()
