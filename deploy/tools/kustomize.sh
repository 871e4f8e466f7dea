#!/usr/bin/env bash
# Prints the path of a kustomize binary of the pinned version, building it once into the
# git-ignored .cache/bin with `go install` from the Go module proxy (about 30 s, then cached).
# Used by `make test` and by tests/deploy to render deploy/k8s/overlays/*.
set -euo pipefail

readonly KUSTOMIZE_VERSION="v5.7.1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin_dir="${root}/.cache/bin"
target="${bin_dir}/kustomize"

installed_version() {
  "${target}" version 2>/dev/null || true
}

if [[ ! -x "${target}" || "$(installed_version)" != "${KUSTOMIZE_VERSION}" ]]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "kustomize.sh: Go is needed to build kustomize ${KUSTOMIZE_VERSION} (or put it at ${target})" >&2
    exit 1
  fi
  mkdir -p "${bin_dir}"
  echo "kustomize.sh: building kustomize ${KUSTOMIZE_VERSION} into ${bin_dir}" >&2
  GOBIN="${bin_dir}" go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" >&2
fi
echo "${target}"
