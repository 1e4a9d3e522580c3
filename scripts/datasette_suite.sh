#!/usr/bin/env bash
# Datasette's own test suite, run twice against the installed Datasette: without any plugin loaded, then
# with the installed plugins (datasette-imgsearch among them), and the tests that fail only the second
# time. Datasette's sdist leaves out its tests' conftest.py and fixtures, so it takes a checkout of
# Datasette at the installed version's tag:
#
#   git clone https://github.com/simonw/datasette
#   git -C datasette checkout "$(python -c 'import datasette.version as v; print(v.__version__)')"
#   scripts/datasette_suite.sh ./datasette [pytest arguments]
#
# It installs Datasette's test requirements (never Datasette itself). docs/architecture.md lists the
# failures any plugin causes and what this one causes.
set -euo pipefail
checkout="$(cd "${1:?usage: scripts/datasette_suite.sh DATASETTE_CHECKOUT [pytest arguments]}" && pwd)"
shift
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
python -m pip install -q beautifulsoup4 pytest-asyncio pytest-timeout trustme cogapp black blacken-docs 2>/dev/null || true
cd "$checkout/tests"
# Both runs import the installed Datasette before the checkout's conftest puts the checkout's source on
# the path: the suite tests the installed one, with or without its plugins.
run() {
    python -m pytest -q -p no:cacheprovider -o addopts= --rootdir "$checkout" "$@" . 2>&1 | tee "$work/out" \
        | grep -E '^(FAILED|ERROR)|passed|failed' || true
    grep -E '^(FAILED|ERROR) ' "$work/out" | sed -E 's/ - .*//' | sort > "$work/$label" || true
}
echo "== Datasette $(python -c 'import datasette.version as v; print(v.__version__)'): without plugins"
label=without PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" run -p datasette_without_plugins "$@"
echo "== with the installed plugins: $(python -c 'import importlib.metadata as m; print(", ".join(sorted(e.name for e in m.entry_points(group="datasette"))))')"
label=with PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" run -p imgsearch_plugins_first "$@"
echo "== failing only with the plugins loaded:"
comm -13 "$work/without" "$work/with"
