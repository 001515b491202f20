# Shared by the bench scripts (sourced).

# proxy_config FILE SECTION...: the config FILE without the named top-level sections (and their subsections),
# e.g. the demo's [control] and [api] when a benchmark measures the proxy alone.
proxy_config() {
    python3 - "$@" <<'PY'
import re, sys
drop = set(sys.argv[2:])
skip = False
for line in open(sys.argv[1]):
    m = re.match(r"^\[+([^\]]+)\]+\s*$", line)
    if m:
        skip = m.group(1).split(".")[0] in drop
    if not skip:
        sys.stdout.write(line)
PY
}
