#!/bin/sh
# Two "hosts" on one machine: network namespaces joined by a veth pair (10.77.0.1, 10.77.0.2),
# with mpirun reaching the second through `ip netns exec` instead of ssh. The shell twin of
# launcher/tests/common/netns.rs (which `cargo test --test multihost` uses), for trying a job by hand:
#
#   sudo cluster/netns/two-hosts.sh up
#   sudo cluster/netns/two-hosts.sh run target/debug/metaloop train --config configs/sinusoid.toml \
#        --set outer.iterations=20
#   sudo cluster/netns/two-hosts.sh down
#
# `run` starts one rank on each host (RANKS_PER_HOST=2 for two), MPI over TCP between the two
# addresses only: no shared memory, no UCX. Needs root and iproute2. NAME picks the namespaces
# (default metaloop-sh-a / -b), so two sets can live side by side.
set -eu
NAME=${NAME:-metaloop-sh}
A="$NAME-a"; B="$NAME-b"
DIR=${TMPDIR:-/tmp}/$NAME
H0=10.77.0.1; H1=10.77.0.2; SUBNET=10.77.0.0/24
# Interface names are limited to 15 bytes.
VA="$(printf %.13s "$NAME")a"; VB="$(printf %.13s "$NAME")b"

up() {
    ip netns add "$A"; ip netns add "$B"
    ip link add "$VA" type veth peer name "$VB"
    for host in "$A $VA $H0" "$B $VB $H1"; do
        set -- $host
        ip link set "$2" netns "$1"
        ip -n "$1" addr add "$3/24" dev "$2"
        ip -n "$1" link set lo up
        ip -n "$1" link set "$2" up
    done
    mkdir -p "$DIR"
    cat > "$DIR/agent.sh" <<AGENT
#!/bin/sh
# mpirun's plm_rsh_agent: called like ssh as \`agent <host> <command...>\`.
host="\$1"; shift
case "\$host" in
  $H0) ns=$A ;;
  $H1) ns=$B ;;
  *) echo "agent.sh: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
    chmod +x "$DIR/agent.sh"
    echo "up: $A ($H0) and $B ($H1); agent $DIR/agent.sh"
}

down() {
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$DIR"
    echo "down: $A and $B removed"
}

run() {
    per=${RANKS_PER_HOST:-1}
    printf '%s slots=%s\n%s slots=%s\n' $H0 "$per" $H1 "$per" > "$DIR/hostfile"
    exec ip netns exec "$A" mpirun -n $((2 * per)) --hostfile "$DIR/hostfile" \
        --map-by node --bind-to none --allow-run-as-root \
        --mca plm_rsh_agent "$DIR/agent.sh" \
        --mca pml ob1 --mca btl tcp,self \
        --mca btl_tcp_if_include $SUBNET --mca oob_tcp_if_include $SUBNET \
        "$@"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 up | run PROGRAM [ARGS...] | down" >&2; exit 2 ;;
esac
