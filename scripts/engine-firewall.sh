#!/usr/bin/env bash
# Firewall rules for the model containers on one Docker engine host. Run it as
# root on every engine host of every pool (the bootstrap runs it for the local
# engine); it is idempotent and changes only its own chains.
#
# Every service gets its own bridge network, named rtsa* (may reach the outside
# world) or rtsd* (may not): CONTAINER_EGRESS in the console's settings. Docker
# already keeps two bridges from talking to each other. These rules add:
#   RTS-INPUT    a container reaches no address of the host itself (PostgreSQL,
#                Redis, the web, the gateway, the Docker API, whatever they
#                listen on); answers to connections the host opened still pass.
#   RTS-FORWARD  no container reaches a link-local address (169.254.0.0/16,
#                where clouds serve instance metadata), and an rtsd* container
#                reaches nothing outside its own bridge.
#
# On a Swarm node a service's tasks have an overlay network of their own, and
# each task also sits on the node's docker_gwbridge, shared by every task, where
# its host-mode port is published. For that bridge:
#   RTS-INPUT    as above: no task reaches the host, so not another task's
#                published port either.
#   RTS-FORWARD  no task reaches another over it (Docker sets enable_icc=false
#                on it; this holds for an engine running without iptables too),
#                and with CONTAINER_EGRESS=deny in this script's environment
#                (the console's setting) no task reaches anything beyond it.
set -euo pipefail

SWARM_BRIDGE=docker_gwbridge
EGRESS=${CONTAINER_EGRESS:-allow}
case "$EGRESS" in allow|deny) ;; *) echo "engine-firewall: CONTAINER_EGRESS must be allow or deny" >&2; exit 1 ;; esac

command -v iptables >/dev/null || { echo "engine-firewall: iptables is missing" >&2; exit 1; }

chain() {  # create or empty a chain
    iptables -N "$1" 2>/dev/null || iptables -F "$1"
}
hook() {  # insert a jump once: hook PARENT ARGS...
    local parent=$1; shift
    iptables -C "$parent" "$@" 2>/dev/null || iptables -I "$parent" 1 "$@"
}

chain RTS-INPUT
iptables -A RTS-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
iptables -A RTS-INPUT -j DROP
hook INPUT -i rts+ -j RTS-INPUT
hook INPUT -i "$SWARM_BRIDGE" -j RTS-INPUT

chain RTS-FORWARD
iptables -A RTS-FORWARD -d 169.254.0.0/16 -j DROP
iptables -A RTS-FORWARD -i rtsd+ -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
iptables -A RTS-FORWARD -i rtsd+ ! -o rtsd+ -j DROP
iptables -A RTS-FORWARD -i "$SWARM_BRIDGE" -o "$SWARM_BRIDGE" -j DROP
if [ "$EGRESS" = deny ]; then
    iptables -A RTS-FORWARD -i "$SWARM_BRIDGE" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    iptables -A RTS-FORWARD -i "$SWARM_BRIDGE" -j DROP
fi
# DOCKER-USER exists once dockerd has started; FORWARD covers an engine without it.
if iptables -L DOCKER-USER -n >/dev/null 2>&1; then
    parent=DOCKER-USER
else
    parent=FORWARD
fi
hook "$parent" -i rts+ -j RTS-FORWARD
hook "$parent" -i "$SWARM_BRIDGE" -j RTS-FORWARD
echo "engine-firewall: rules in place (RTS-INPUT, RTS-FORWARD)"
