#!/usr/bin/env python3
"""Lists functions in src/ and crates/ longer than a limit (default 80 lines, from the `fn` line to the closing
brace), longest first, and files longer than a limit (default 600 lines).

Test code is left out unless `--tests` is given: files named `tests.rs` / `*_tests.rs` or under a `tests/`
folder, and inline `#[cfg(test)] mod ... { }` blocks.

Usage: scripts/long_fns.py [--tests] [--max-fn N] [--max-file N] [SRC_DIR...]
Paths are shown relative to the repository root (to the folder given, with SRC_DIR).
Exit status 1 when some function is over the limit.
"""

import os
import re
import signal
import sys


def blank(text):
    """Same text with comments, string and char literals replaced by spaces (newlines kept), so braces in
    them do not count and line numbers stay right."""
    out = list(text)
    i, n = 0, len(text)

    def wipe(a, b):
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            wipe(i, j)
            i = j
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif text[i] == "'" and (m := re.compile(r"'(\\.[^']*|[^\\'])'").match(text, i)):
            wipe(i, m.end())
            i = m.end()
        else:
            i += 1
    return "".join(out)


def match_brace(text, at):
    """Index just after the brace that closes the `{` at `at`."""
    depth = 0
    for k in range(at, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
    return len(text)


def test_ranges(text):
    ranges = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        ranges.append((m.start(), match_brace(text, m.end() - 1)))
    return ranges


def functions(text):
    """(name, start offset, end offset) of every fn with a body."""
    for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", text):
        k, paren = m.end(), 0
        while k < len(text):
            c = text[k]
            if c in "([":
                paren += 1
            elif c in ")]":
                paren -= 1
            elif c == ";" and paren == 0:
                k = -1
                break
            elif c == "{" and paren == 0:
                break
            k += 1
        if k < 0 or k >= len(text):
            continue
        yield m.group(1), m.start(), match_brace(text, k)


def is_test_file(rel):
    parts = rel.split(os.sep)
    return parts[-1] == "tests.rs" or parts[-1].endswith("_tests.rs") or "tests" in parts[:-1]


def scan(src, base, tests, max_fn, max_file, long_fns, long_files):
    """Adds the long functions and files of the .rs files under `src` (paths shown relative to `base`)."""
    for root, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            if not tests and is_test_file(os.path.relpath(path, src)):
                continue
            shown = os.path.relpath(path, base)
            with open(path, encoding="utf-8") as f:
                raw = f.read()
            lines = raw.count("\n")
            if lines > max_file:
                long_files.append((lines, shown))
            text = blank(raw)
            skip = [] if tests else test_ranges(text)
            for fname, a, b in functions(text):
                if any(s <= a < e for s, e in skip):
                    continue
                first = text.count("\n", 0, a) + 1
                last = text.count("\n", 0, b) + 1
                if last - first + 1 > max_fn:
                    long_fns.append((last - first + 1, f"{shown}:{first}", fname))


def main():
    argv = sys.argv[1:]
    tests = "--tests" in argv
    max_fn, max_file, dirs = 80, 600, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--max-fn":
            max_fn, i = int(argv[i + 1]), i + 1
        elif a == "--max-file":
            max_file, i = int(argv[i + 1]), i + 1
        elif not a.startswith("--"):
            dirs.append(a)
        i += 1
    repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    # (folder, what its paths are shown relative to): by default the root crate's src/ and the workspace's
    # other crates (crates/).
    roots = [(d, d) for d in dirs] or [(os.path.join(repo, d), repo) for d in ("src", "crates")]
    long_fns, long_files = [], []
    for src, base in roots:
        scan(src, base, tests, max_fn, max_file, long_fns, long_files)
    print(f"functions over {max_fn} lines: {len(long_fns)}")
    for n, where, fname in sorted(long_fns, reverse=True):
        print(f"  {n:4} {where} {fname}")
    print(f"files over {max_file} lines: {len(long_files)}")
    for n, rel in sorted(long_files, reverse=True):
        print(f"  {n:4} {rel}")
    return 1 if long_fns else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
