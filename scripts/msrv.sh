#!/usr/bin/env bash
# Checks that the workspace's `rust-version` (the MSRV) is true, cheaply, with the one
# toolchain CI has:
#  - every crate inherits it (`rust-version.workspace = true`), so clippy's
#    `incompatible_msrv` lint (on by default, denied by `clippy -D warnings`) flags any
#    std API newer than the MSRV;
#  - no dependency in Cargo.lock declares a newer `rust-version` than ours.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
for f in crates/*/Cargo.toml; do
  if ! grep -q '^rust-version.workspace = true' "$f"; then
    echo "msrv: $f does not inherit rust-version from the workspace" >&2
    fail=1
  fi
done
cargo metadata --format-version 1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
def ver(s):
    return tuple(int(x) for x in s.split("."))
ws = set(m["workspace_members"])
ours = [p for p in m["packages"] if p["id"] in ws]
msrv = min(ver(p["rust_version"]) for p in ours if p.get("rust_version"))
bad = [(p["name"], p["version"], p["rust_version"]) for p in m["packages"]
       if p["id"] not in ws and p.get("rust_version") and ver(p["rust_version"]) > msrv]
ours_text = ".".join(map(str, msrv))
for name, v, rv in sorted(bad):
    print(f"msrv: dependency {name} {v} needs Rust {rv}, above our rust-version {ours_text}", file=sys.stderr)
sys.exit(1 if bad else 0)
' || fail=1
exit $fail
