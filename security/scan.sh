#!/bin/sh
# Security tooling (issue 18), run by .ci/run after the tests:
#   pip-audit  known vulnerabilities in the locked dependencies (requirements.lock; asks PyPI's
#              vulnerability service, so it needs the network CI has: PyPI is reachable there)
#   bandit     static analysis of src/; fails on any finding not in security/bandit-baseline.json
#   detect-secrets  secret scan of every tracked file; fails on any not in security/secrets.baseline
# Every finding in the two baselines is justified in security/justifications.md.
# `security/scan.sh --update-baselines` rewrites both baselines from the current tree (then
# justify each new finding in security/justifications.md, or fix it).
# The tools are pinned in security/requirements-tools.lock and live in their own
# venv (.venv-security), apart from the project's locked environment.
set -eu
cd "$(dirname "$0")/.."
V=${SECURITY_VENV:-.venv-security}
if [ ! -x "$V/bin/bandit" ] || [ security/requirements-tools.lock -nt "$V/.locked" ]; then
  python3 -m venv "$V"
  "$V/bin/python" -m pip install -q --disable-pip-version-check -r security/requirements-tools.lock
  touch "$V/.locked"
fi
if [ "${1:-}" = "--update-baselines" ]; then
  "$V/bin/bandit" -r src -q -f json -o "$V/bandit.json" || true
  "$V/bin/python" - "$V/bandit.json" security/bandit-baseline.json <<'PY'
import json, sys
json.dump({"errors": [], "results": json.load(open(sys.argv[1]))["results"]}, open(sys.argv[2], "w"),
          indent=1, sort_keys=True)
PY
  git ls-files -z | xargs -0 "$V/bin/detect-secrets" scan --exclude-files '^security/|(^|/)(tests/vectors|tests/fuzz/corpus)/' \
    > security/secrets.baseline
  echo "security: baselines rewritten; justify the new findings in security/justifications.md" >&2
  exit 0
fi
echo "security: pip-audit on requirements.lock" >&2
audit="$V/pip-audit.json"
"$V/bin/pip-audit" -r requirements.lock --no-deps --disable-pip --progress-spinner off -f json -o "$audit" \
  2>"$V/pip-audit.log" || true
# A vulnerability fails the scan. A package the vulnerability service did not answer for is
# not audited: said loudly, and fatal when IOTGUARD_REQUIRE_AUDIT=1 (a PyPI mirror without the
# vulnerability API answers "not found on PyPI" for every package).
"$V/bin/python" - "$audit" <<'PY'
import json, os, sys
deps = json.load(open(sys.argv[1]))["dependencies"]
vulns = [(d["name"], d["version"], v["id"]) for d in deps for v in d.get("vulns", [])]
skipped = [d["name"] for d in deps if d.get("skip_reason")]
for name, version, vid in vulns:
    print(f"security: {name} {version}: {vid}", file=sys.stderr)
if skipped:
    print(f"security: WARNING: {len(skipped)} of {len(deps)} locked packages could NOT be audited "
          "(the vulnerability service did not answer for them)", file=sys.stderr)
sys.exit(1 if vulns or (skipped and os.environ.get("IOTGUARD_REQUIRE_AUDIT") == "1") else 0)
PY
echo "security: bandit on src/ (against security/bandit-baseline.json)" >&2
"$V/bin/bandit" -r src -q -b security/bandit-baseline.json
echo "security: detect-secrets on tracked files (against security/secrets.baseline)" >&2
cp security/secrets.baseline "$V/secrets.baseline"  # the hook rewrites its baseline; keep ours unchanged
git ls-files -z | xargs -0 "$V/bin/detect-secrets-hook" --baseline "$V/secrets.baseline" \
  --exclude-files '^security/|(^|/)(tests/vectors|tests/fuzz/corpus)/'
echo "security: clean" >&2
