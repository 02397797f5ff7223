#!/bin/sh
# Security tooling (issue 18), run by .ci/run after the tests:
#   pip-audit  known vulnerabilities in the locked dependencies (requirements.lock); asks PyPI's
#              vulnerability API, so it audits only where the real PyPI answers (not behind a mirror
#              without that API): the scan says how many packages were audited (see below)
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
rm -f "$audit"
"$V/bin/pip-audit" -r requirements.lock --no-deps --disable-pip --progress-spinner off -f json -o "$audit" \
  2>"$V/pip-audit.log" || true
# What was audited is said explicitly, never implied. pip-audit asks PyPI's vulnerability API about
# each locked package; a package it gets no answer for is NOT audited (pip-audit itself still prints
# "No known vulnerabilities found"). Behind a PyPI mirror without that API (this development
# machine) that is every package. The outcome is written to $V/audit-outcome and repeated in the
# last line of the scan:
#   a vulnerability in an audited package     -> the scan fails;
#   a package not audited, or pip-audit failed -> the scan fails with IOTGUARD_REQUIRE_AUDIT=1
#                                                (set it where the real PyPI is reachable), and
#                                                otherwise ends "dependency audit INCOMPLETE", not "clean".
"$V/bin/python" - "$audit" "$V/pip-audit.log" "$V/audit-outcome" <<'PY'
import json, os, sys
audit, log, outcome = sys.argv[1:4]
try:
    deps = json.load(open(audit))["dependencies"]
except (OSError, ValueError, KeyError):
    tail = open(log).read().strip().splitlines()[-1:] if os.path.exists(log) else []
    print(f"security: pip-audit FAILED to run, nothing audited: {tail[0] if tail else 'no output'}",
          file=sys.stderr)
    deps = None
if deps is None:
    total, audited, vulns = 0, 0, []
else:
    total = len(deps)
    vulns = [(d["name"], d["version"], v["id"]) for d in deps for v in d.get("vulns", [])]
    skipped = [d for d in deps if d.get("skip_reason")]
    audited = total - len(skipped)
    for name, version, vid in vulns:
        print(f"security: {name} {version}: {vid}", file=sys.stderr)
    print(f"security: pip-audit audited {audited} of {total} locked packages; {len(vulns)} known "
          f"vulnerabilities in those", file=sys.stderr)
    if skipped:
        print(f"security: NOT AUDITED: {len(skipped)} packages (e.g. {skipped[0]['skip_reason']!r}); "
              "the vulnerability service did not answer for them", file=sys.stderr)
complete = deps is not None and audited == total
open(outcome, "w").write("complete\n" if complete else f"INCOMPLETE ({audited} of {total} packages audited)\n")
required = os.environ.get("IOTGUARD_REQUIRE_AUDIT") == "1"
if not complete and required:
    print("security: IOTGUARD_REQUIRE_AUDIT=1 and the audit is incomplete: failing", file=sys.stderr)
sys.exit(1 if vulns or (not complete and required) else 0)
PY
echo "security: bandit on src/ (against security/bandit-baseline.json)" >&2
"$V/bin/bandit" -r src -q -b security/bandit-baseline.json
echo "security: detect-secrets on tracked files (against security/secrets.baseline)" >&2
cp security/secrets.baseline "$V/secrets.baseline"  # the hook rewrites its baseline; keep ours unchanged
git ls-files -z | xargs -0 "$V/bin/detect-secrets-hook" --baseline "$V/secrets.baseline" \
  --exclude-files '^security/|(^|/)(tests/vectors|tests/fuzz/corpus)/'
outcome=$(cat "$V/audit-outcome")
if [ "$outcome" = complete ]; then
  echo "security: clean (pip-audit complete, bandit, detect-secrets)" >&2
else
  echo "security: bandit and detect-secrets clean; dependency audit $outcome: dependencies NOT audited" >&2
fi
