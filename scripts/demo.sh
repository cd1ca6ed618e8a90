#!/usr/bin/env bash
# `make demo`: the lab DR drill end to end. Brings the lab up, deploys the app on the first
# droplet, writes orders through it, takes a pg_backup and runs playbooks/dr_restore.yml in
# drill mode; the report (RTO, RPO, rows verified) is printed and saved in
# /tmp/ops-runbooks-lab/dr-reports. The lab stays up (`make lab-down` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-$PWD/.venv}
export PATH="$VENV/bin:$PATH" ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-1}
host=${DEMO_HOST:-ops-lab-droplet1}
python -m lab up
echo "=== deploy the app (v1) on $host"
ansible-playbook playbooks/deploy.yml --limit "$host" -e deploy_version=v1
echo "=== write data through the app"
ansible-playbook lab/playbooks/demo_orders.yml -e demo_host="$host"
echo "=== take a backup"
ansible-playbook playbooks/backup.yml
echo "=== DR drill"
ansible-playbook playbooks/dr_restore.yml --limit "$host" -e dr_mode=drill
report=$(find /tmp/ops-runbooks-lab/dr-reports -name "*.md" -printf "%T@ %p\n" | sort -n | tail -n 1 | cut -d" " -f2-)
echo "=== report: $report"
cat "$report"
