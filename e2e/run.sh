#!/usr/bin/env bash
# The kind end-to-end suite of Weir (see e2e/README.md): creates a kind
# cluster, builds and loads the operator and worker images, deploys Kafka
# and MinIO, installs the operator's chart, runs the scenarios of
# e2e/tests/scenarios, and deletes the cluster.
#
#   e2e/run.sh                 every scenario
#   e2e/run.sh b_burst         the scenarios whose name contains b_burst
#   KEEP=1 e2e/run.sh          keep the cluster afterwards (reused next time)
#   CLUSTER=name e2e/run.sh    another cluster name (default weir-e2e)
#
# On failure, logs, Events and StreamingJobs are collected in e2e/artifacts/.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly REPO_ROOT
readonly CLUSTER="${CLUSTER:-weir-e2e}"
readonly KEEP="${KEEP:-0}"
readonly CONTEXT="kind-${CLUSTER}"
readonly ARTIFACTS="${SCRIPT_DIR}/artifacts"
readonly MANIFESTS="${SCRIPT_DIR}/manifests"

readonly OPERATOR_REPOSITORY="ghcr.io/weir-dev/weir-operator"
readonly WORKER_REPOSITORY="ghcr.io/weir-dev/weir-worker"
readonly TAG="e2e"
readonly UPGRADE_TAG="e2e-b"
readonly OPERATOR_IMAGE="${OPERATOR_REPOSITORY}:${TAG}"
readonly WORKER_IMAGE="${WORKER_REPOSITORY}:${TAG}"
readonly UPGRADE_IMAGE="${WORKER_REPOSITORY}:${UPGRADE_TAG}"

readonly RELEASE="weir-operator"
readonly OPERATOR_NAMESPACE="weir-system"
readonly INFRA_NAMESPACE="weir-e2e"
readonly JOBS_NAMESPACE="analytics"

# The sample's topics (config/samples/clickstream-counts.yaml), as
# NAME:PARTITIONS. The other scenarios create topics of their own.
readonly SAMPLE_TOPICS=(
  "clicks:12"
  "clicks-per-user-minute:12"
  "clicks-dead-letter:1"
  "clicks-late:1"
)

cluster_ready=0

log() {
  printf '==> %s\n' "$*" >&2
}

# One message per missing tool: what it is and where to get it.
require_tools() {
  local missing=0
  if ! command -v docker >/dev/null 2>&1; then
    log "docker is missing: the container engine kind runs its node in and the images are built with (https://docs.docker.com/engine/install/)"
    missing=1
  fi
  if ! command -v kind >/dev/null 2>&1; then
    log "kind is missing: Kubernetes in Docker, v0.29.0 or later (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
    missing=1
  fi
  if ! command -v kubectl >/dev/null 2>&1; then
    log "kubectl is missing: the Kubernetes command-line client (https://kubernetes.io/docs/tasks/tools/)"
    missing=1
  fi
  if ! command -v helm >/dev/null 2>&1; then
    log "helm is missing: installs the operator's chart, v3 (https://helm.sh/docs/intro/install/)"
    missing=1
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    log "cargo is missing: the Rust toolchain that builds and runs the scenarios (https://rustup.rs)"
    missing=1
  fi
  if [[ "${missing}" -ne 0 ]]; then
    exit 1
  fi
  if ! docker info >/dev/null 2>&1; then
    log "docker is installed but its daemon does not answer (is it running, and may this user use it?)"
    exit 1
  fi
}

k() {
  kubectl --context "${CONTEXT}" "$@"
}

create_cluster() {
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    log "reusing the kind cluster ${CLUSTER}"
  else
    log "creating the kind cluster ${CLUSTER}"
    kind create cluster --name "${CLUSTER}" --config "${SCRIPT_DIR}/kind-config.yaml" --wait 5m
  fi
  cluster_ready=1
}

build_images() {
  log "building ${OPERATOR_IMAGE} and ${WORKER_IMAGE}"
  export DOCKER_BUILDKIT=1
  docker build -f "${REPO_ROOT}/docker/operator.Dockerfile" -t "${OPERATOR_IMAGE}" "${REPO_ROOT}"
  docker build -f "${REPO_ROOT}/docker/worker.Dockerfile" -t "${WORKER_IMAGE}" "${REPO_ROOT}"
  # The upgrade scenario moves a job to the same worker under another tag.
  docker tag "${WORKER_IMAGE}" "${UPGRADE_IMAGE}"
  log "loading the images into ${CLUSTER}"
  local images=("${OPERATOR_IMAGE}" "${WORKER_IMAGE}" "${UPGRADE_IMAGE}")
  kind load docker-image --name "${CLUSTER}" "${images[@]}"
}

deploy_infrastructure() {
  log "deploying Kafka and MinIO in ${INFRA_NAMESPACE}"
  k apply -f "${MANIFESTS}/namespaces.yaml"
  k apply -f "${MANIFESTS}/kafka.yaml" -f "${MANIFESTS}/minio.yaml" -f "${MANIFESTS}/s3-credentials.yaml"
  k -n "${INFRA_NAMESPACE}" rollout status statefulset/kafka --timeout=10m
  k -n "${INFRA_NAMESPACE}" rollout status deployment/minio --timeout=5m
  k apply -f "${MANIFESTS}/minio-bucket.yaml"
  k -n "${INFRA_NAMESPACE}" wait --for=condition=complete job/minio-bucket --timeout=5m
}

# Creates TOPIC with PARTITIONS unless it exists, retrying while the broker
# starts.
create_topic() {
  local topic="$1"
  local partitions="$2"
  local attempt
  for attempt in $(seq 1 30); do
    if k -n "${INFRA_NAMESPACE}" exec kafka-0 -- /opt/kafka/bin/kafka-topics.sh \
      --bootstrap-server localhost:9092 --create --if-not-exists \
      --topic "${topic}" --partitions "${partitions}" --replication-factor 1; then
      return 0
    fi
    log "cannot create topic ${topic} yet (attempt ${attempt}); retrying"
    sleep 5
  done
  log "cannot create topic ${topic}"
  return 1
}

create_topics() {
  log "creating the sample's topics"
  local entry
  for entry in "${SAMPLE_TOPICS[@]}"; do
    create_topic "${entry%%:*}" "${entry##*:}"
  done
}

install_operator() {
  log "installing the chart ${RELEASE} into ${OPERATOR_NAMESPACE}"
  local values=(
    --set "image.repository=${OPERATOR_REPOSITORY}"
    --set "image.tag=${TAG}"
    --set "image.pullPolicy=IfNotPresent"
    --set "workerImage.repository=${WORKER_REPOSITORY}"
    --set "workerImage.tag=${TAG}"
  )
  helm upgrade --install "${RELEASE}" "${REPO_ROOT}/charts/weir-operator" \
    --kube-context "${CONTEXT}" \
    --namespace "${OPERATOR_NAMESPACE}" --create-namespace \
    "${values[@]}" --wait --timeout 5m
  k -n "${OPERATOR_NAMESPACE}" rollout status "deployment/${RELEASE}" --timeout=5m
}

run_scenarios() {
  log "running the scenarios"
  (
    cd "${REPO_ROOT}"
    WEIR_E2E=1 \
      WEIR_E2E_KAFKA="localhost:30092" \
      WEIR_E2E_CONTEXT="${CONTEXT}" \
      WEIR_E2E_OPERATOR_IMAGE="${OPERATOR_IMAGE}" \
      WEIR_E2E_UPGRADE_IMAGE="${UPGRADE_IMAGE}" \
      cargo test -p weir-e2e --test scenarios -- --test-threads=1 --nocapture "$@"
  )
}

# Logs, Events and StreamingJobs, for a failed run. Best effort: one thing
# that cannot be read does not stop the rest.
collect_artifacts() {
  log "collecting artifacts in ${ARTIFACTS}"
  mkdir -p "${ARTIFACTS}/workers"
  k -n "${OPERATOR_NAMESPACE}" logs -l "app.kubernetes.io/name=weir-operator" \
    --all-containers --prefix --tail=-1 >"${ARTIFACTS}/operator.log" 2>&1 || true
  local pod
  local pods
  pods="$(k -n "${JOBS_NAMESPACE}" get pods -o name 2>/dev/null || true)"
  for pod in ${pods}; do
    k -n "${JOBS_NAMESPACE}" logs "${pod}" --all-containers \
      >"${ARTIFACTS}/workers/${pod#pod/}.log" 2>&1 || true
  done
  k get events -A --sort-by=.lastTimestamp >"${ARTIFACTS}/events.txt" 2>&1 || true
  k get sj -A -o yaml >"${ARTIFACTS}/streamingjobs.yaml" 2>&1 || true
  k get pods -A -o wide >"${ARTIFACTS}/pods.txt" 2>&1 || true
}

on_exit() {
  local status=$?
  if [[ "${status}" -ne 0 && "${cluster_ready}" -eq 1 ]]; then
    collect_artifacts
  fi
  if [[ "${KEEP}" == "1" ]]; then
    log "keeping the kind cluster ${CLUSTER} (kubectl --context ${CONTEXT})"
  elif [[ "${cluster_ready}" -eq 1 ]]; then
    log "deleting the kind cluster ${CLUSTER}"
    kind delete cluster --name "${CLUSTER}" || true
  fi
  exit "${status}"
}

main() {
  require_tools
  trap on_exit EXIT
  create_cluster
  build_images
  deploy_infrastructure
  create_topics
  install_operator
  run_scenarios "$@"
  log "every scenario passed"
}

main "$@"
