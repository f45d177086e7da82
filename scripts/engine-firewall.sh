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
set -euo pipefail

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

chain RTS-FORWARD
iptables -A RTS-FORWARD -d 169.254.0.0/16 -j DROP
iptables -A RTS-FORWARD -i rtsd+ -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
iptables -A RTS-FORWARD -i rtsd+ ! -o rtsd+ -j DROP
# DOCKER-USER exists once dockerd has started; FORWARD covers an engine without it.
if iptables -L DOCKER-USER -n >/dev/null 2>&1; then
    hook DOCKER-USER -i rts+ -j RTS-FORWARD
else
    hook FORWARD -i rts+ -j RTS-FORWARD
fi
echo "engine-firewall: rules in place (RTS-INPUT, RTS-FORWARD)"
