#!/usr/bin/env bash
# Install (or upgrade) the TIDM edge agent on a bare gateway as a hardened systemd service.
#
#   sudo deploy/gateway/install.sh --agent-id press-line-1 --site plant-a --bootstrap kafka.example:9093
#   deploy/gateway/install.sh --dry-run ...      # print what would be done, change nothing
#
# Run from a checkout of the repository (it installs the package from it). Idempotent: a re-run
# upgrades the virtual environment from requirements/runtime.lock (every wheel hash-checked) and
# the unit file, and keeps the agent's key, certificates, settings and spool.
#
# What it makes:
#   user/group tidm-agent                        the service's system account
#   /opt/tidm-agent/venv                         the agent (root-owned, read-only to the service)
#   /etc/tidm-agent/agent.yaml                   settings (from deploy/gateway/agent.yaml)
#   /etc/tidm-agent/credentials/agent.key        Ed25519 identity, root-only (LoadCredential=)
#   /etc/tidm-agent/credentials/opcua-*.{der,pem} OPC UA client certificate and key
#   /etc/tidm-agent/agent.pub                    the public key, to register with ingest
#   /etc/tidm-agent/opcua-trust/                 put trusted OPC UA server certificates here
#   /etc/systemd/system/tidm-agent.service       the unit; /var/lib/tidm-agent is its StateDirectory
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install.sh [--dry-run] [--agent-id ID] [--site SITE] [--bootstrap HOST:PORT]
                  [--python PYTHON] [--prefix DIR] [--no-start]
  --dry-run     print the commands instead of running them (no root needed)
  --agent-id    the agent's id (default: this host's name)
  --site        the site this gateway belongs to (default: site-1)
  --bootstrap   Kafka bootstrap servers (default: 127.0.0.1:9092)
  --python      the Python 3.11+ to build the virtual environment with (default: python3)
  --prefix      where the virtual environment goes (default: /opt/tidm-agent)
  --no-start    install and enable, but do not (re)start the service
EOF
}

dry_run=0
agent_id="$(hostname -s 2>/dev/null || hostname)"
site="site-1"
bootstrap="127.0.0.1:9092"
python="python3"
prefix="/opt/tidm-agent"
start=1

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --agent-id) agent_id="${2:?--agent-id needs a value}"; shift ;;
    --site) site="${2:?--site needs a value}"; shift ;;
    --bootstrap) bootstrap="${2:?--bootstrap needs a value}"; shift ;;
    --python) python="${2:?--python needs a value}"; shift ;;
    --prefix) prefix="${2:?--prefix needs a value}"; shift ;;
    --no-start) start=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [[ ! "${agent_id}" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
  echo "install.sh: --agent-id '${agent_id}': use letters, digits, '.', '_' and '-'" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly user="tidm-agent"
readonly etc="/etc/tidm-agent"
readonly credentials="${etc}/credentials"
readonly unit_dir="/etc/systemd/system"
venv="${prefix}/venv"

# Run a command, or only print it (shell-quoted) in --dry-run mode.
run() {
  if [[ "${dry_run}" -eq 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

step() {
  printf '==> %s\n' "$*"
}

for needed in "${repo}/requirements/runtime.lock" "${repo}/pyproject.toml" \
  "${repo}/deploy/gateway/tidm-agent.service" "${repo}/deploy/gateway/agent.yaml"; do
  if [[ ! -f "${needed}" ]]; then
    echo "install.sh: ${needed} is missing; run this script from a TIDM checkout" >&2
    exit 1
  fi
done

if [[ "${dry_run}" -eq 0 && "${EUID}" -ne 0 ]]; then
  echo "install.sh: run as root (or with --dry-run to see what it would do)" >&2
  exit 1
fi

if ! "${python}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: ${python} is not Python 3.11 or newer (choose one with --python)" >&2
  exit 1
fi

step "system account ${user}"
if getent passwd "${user}" >/dev/null; then
  echo "    exists"
else
  run useradd --system --user-group --home-dir /var/lib/tidm-agent --no-create-home \
    --shell /usr/sbin/nologin --comment "TIDM edge agent" "${user}"
fi

step "directories"
run install -d -o root -g root -m 0755 "${prefix}"
run install -d -o root -g root -m 0755 "${etc}"
run install -d -o root -g root -m 0700 "${credentials}"
run install -d -o root -g root -m 0755 "${etc}/opcua-trust"

step "virtual environment ${venv} from requirements/runtime.lock"
if [[ ! -x "${venv}/bin/python" ]]; then
  run "${python}" -m venv "${venv}"
fi
run "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --require-hashes --only-binary=:all: -r "${repo}/requirements/runtime.lock"
run "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${repo}"

step "agent identity"
if [[ -s "${credentials}/agent.key" ]]; then
  echo "    ${credentials}/agent.key exists; kept"
else
  run "${venv}/bin/tidm" agent keygen --agent-id "${agent_id}" --out "${credentials}/agent.key"
fi
# The public key, derived from the (new or kept) private key: what ingest must trust.
if [[ "${dry_run}" -eq 1 ]]; then
  printf '+ %s\n' "write the public key of ${credentials}/agent.key to ${etc}/agent.pub"
else
  "${venv}/bin/python" - "${credentials}/agent.key" >"${etc}/agent.pub.tmp" <<'PY'
import sys
from pathlib import Path

from tidm.ingest.identity import AgentIdentity, public_key_b64

print(public_key_b64(AgentIdentity.load("agent", Path(sys.argv[1])).public_key))
PY
  mv "${etc}/agent.pub.tmp" "${etc}/agent.pub"
  chmod 0644 "${etc}/agent.pub"
fi

step "OPC UA client certificate"
if [[ -s "${credentials}/opcua-cert.der" && -s "${credentials}/opcua-key.pem" ]]; then
  echo "    exists; kept"
elif command -v openssl >/dev/null 2>&1 || [[ "${dry_run}" -eq 1 ]]; then
  # Self-signed; OPC UA servers identify clients by the application URI in subjectAltName.
  run openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 3650 \
    -subj "/CN=tidm-agent ${agent_id}" \
    -addext "subjectAltName=URI:urn:tidm:agent,DNS:${agent_id}" \
    -addext "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,dataEncipherment" \
    -addext "extendedKeyUsage=clientAuth" \
    -keyout "${credentials}/opcua-key.pem" -out "${credentials}/opcua-cert.pem"
  run openssl x509 -in "${credentials}/opcua-cert.pem" -outform der -out "${credentials}/opcua-cert.der"
  run chmod 0600 "${credentials}/opcua-key.pem"
else
  echo "install.sh: openssl is missing; put opcua-cert.der and opcua-key.pem in ${credentials}" >&2
  exit 1
fi

step "settings ${etc}/agent.yaml"
if [[ -f "${etc}/agent.yaml" ]]; then
  echo "    exists; kept (compare with deploy/gateway/agent.yaml after upgrades)"
else
  rendered="$(sed -e "s|@AGENT_ID@|${agent_id}|" -e "s|@SITE@|${site}|" \
    -e "s|@BOOTSTRAP@|${bootstrap}|" "${repo}/deploy/gateway/agent.yaml")"
  if [[ "${dry_run}" -eq 1 ]]; then
    run install -o root -g "${user}" -m 0640 /dev/stdin "${etc}/agent.yaml"
  else
    printf '%s\n' "${rendered}" | install -o root -g "${user}" -m 0640 /dev/stdin "${etc}/agent.yaml"
  fi
fi

step "systemd unit"
run install -o root -g root -m 0644 "${repo}/deploy/gateway/tidm-agent.service" \
  "${unit_dir}/tidm-agent.service"
run systemctl daemon-reload
run systemctl enable tidm-agent.service
if [[ "${start}" -eq 1 ]]; then
  run systemctl restart tidm-agent.service
fi

step "done"
cat <<EOF
    Trust this agent at ingest: add "${agent_id}": "$(cat "${etc}/agent.pub" 2>/dev/null || echo '<public key>')"
    to the "agents" map of trusted-agents.json (Kubernetes: the tidm-trusted-agents ConfigMap).
    Put the OPC UA servers' certificates in ${etc}/opcua-trust/ and their endpoints in ${etc}/agent.yaml.
    Status: systemctl status tidm-agent    Logs: journalctl -u tidm-agent -f
EOF
