#!/usr/bin/env bash
# Label (and taint) a node that already joined, instead of the agent's config.yaml.
#   examples/k3s/label-existing-node.sh NODE SITE ROLE TIER
# e.g. examples/k3s/label-existing-node.sh munich-ipc-3 plant-munich line near-edge
set -euo pipefail
if [ "$#" -ne 4 ]; then
  echo "usage: $0 NODE SITE ROLE TIER   (TIER: device | near-edge | regional-mec | cloud)" >&2
  exit 1
fi
node=$1 site=$2 role=$3 tier=$4
case "$tier" in
  device|near-edge) taint=yes ;;
  regional-mec|cloud) taint=no ;;
  *) echo "error: TIER must be device, near-edge, regional-mec or cloud, not '$tier'" >&2; exit 1 ;;
esac
kubectl label node "$node" --overwrite "edge.example.com/site=$site" "edge.example.com/role=$role"
if [ "$taint" = yes ]; then
  kubectl taint node "$node" --overwrite "continuum.dev/tier=$tier:NoSchedule"
fi
kubectl get node "$node" --show-labels
