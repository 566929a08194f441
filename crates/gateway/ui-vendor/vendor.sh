#!/usr/bin/env bash
# The web console's third-party files, from npm with this directory's
# lockfile: `crates/gateway/ui-vendor/vendor.sh` copies them into
# crates/gateway/ui/vendor/ (committed: the Rust build embeds them and needs
# no Node); `vendor.sh --check` fails if the committed copies differ from
# what the lockfile gives (.ci/run runs it).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
OUT=../ui/vendor
FILES=(
    "node_modules/@xterm/xterm/lib/xterm.mjs:xterm.mjs"
    "node_modules/@xterm/xterm/css/xterm.css:xterm.css"
    "node_modules/@xterm/xterm/LICENSE:xterm.LICENSE"
    "node_modules/@xterm/addon-fit/lib/addon-fit.mjs:addon-fit.mjs"
    "node_modules/@xterm/addon-fit/LICENSE:addon-fit.LICENSE"
)
if [[ "${1:-}" == "--check" ]]; then
    stale=0
    for f in "${FILES[@]}"; do
        if ! cmp -s "${f%%:*}" "$OUT/${f##*:}"; then
            echo "crates/gateway/ui/vendor/${f##*:} differs from ${f%%:*}" >&2
            stale=1
        fi
    done
    extra=$(comm -13 <(printf '%s\n' "${FILES[@]##*:}" | sort) <(ls "$OUT" | sort))
    if [[ -n "$extra" ]]; then
        echo "crates/gateway/ui/vendor/ has files vendor.sh does not make: $extra" >&2
        stale=1
    fi
    if [[ $stale -ne 0 ]]; then
        echo "run crates/gateway/ui-vendor/vendor.sh and commit crates/gateway/ui/vendor/" >&2
        exit 1
    fi
    echo "crates/gateway/ui/vendor/ is up to date with the lockfile"
    exit 0
fi
mkdir -p "$OUT"
rm -f "$OUT"/*
for f in "${FILES[@]}"; do
    cp "${f%%:*}" "$OUT/${f##*:}"
done
echo "copied ${#FILES[@]} files into crates/gateway/ui/vendor/"
