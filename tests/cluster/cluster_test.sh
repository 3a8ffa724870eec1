#!/usr/bin/env bash
# `make cluster-test`: README's cluster workflow, for real, on this one machine (root only).
#
# Two "hosts": network namespaces joined by a veth pair, the head at 10.213.77.1 and a worker node at
# 10.213.77.2, each with its own PID namespace (so one node's `ray stop` cannot see the other's processes)
# and an sshd on its own address for a dedicated user whose login shell finds the project's .venv.
# `ray up` of cluster.yaml's local variant (tests/cluster/local_variant.py), `ray submit train.py` with the
# demo config cut to a few steps, the MLflow run and the node ids of the Ray Data tasks and training
# workers checked (tests/cluster/report.py), `ray down` (and `ray stop` on the worker, which the local
# provider's `ray down` leaves running). Nothing listens outside the two namespaces; the trap removes the
# namespaces (and every process in them), the user and its files, even on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$ROOT/.venv
U=${CLUSTER_TEST_USER:-psray}
H=/home/$U
W=$H/ct                           # the cluster's files, the same path on both nodes; short for Ray's sockets
HEAD_NS=$U-head WORKER_NS=$U-worker
HEAD_IP=10.213.77.1 WORKER_IP=10.213.77.2
RUN=cluster-test STEPS=4
MARK="promptswitch cluster test"  # the user's comment: only a user with it is ever removed
START=$(date +%s)
T="" UP="" DOWN="" OUR_POLICY="" OUR_RUNDIR=""
SSHD_PIDS=() OPENED=()

log() { printf '\n== %s (%ds)\n' "$*" $(($(date +%s) - START)); }
die() { echo "cluster test: $*" >&2; exit 1; }

# A command as the user, in the head's network namespace, with a clean environment.
in_head() {
    ip netns exec "$HEAD_NS" runuser -u "$U" -- env -i HOME="$H" USER="$U" LOGNAME="$U" SHELL=/bin/bash \
        PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 HF_HUB_OFFLINE=1 \
        RAY_TMPDIR="$W/tmp" RAY_AUTH_MODE=token "$@"
}

# Ray's processes on the node of network namespace $1.
ray_processes() {
    local pid args
    for pid in $(ip netns pids "$1"); do
        args=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null || true)
        [[ $args =~ raylet|gcs_server|ray::|ray/dashboard|ray/autoscaler|default_worker ]] &&
            echo "$pid $args"
    done
    return 0
}

dump_logs() {
    local f
    for f in "$W"/*.log "$T"/*.log "$W"/tmp/ray/session_latest/logs/{monitor.log,monitor.err,raylet.out}; do
        [[ -s $f ]] && { echo "---- $f"; tail -n 40 "$f"; }
    done
}

# The namespaces and every process in them (all started here, or by an earlier run that was killed).
remove_namespaces() {
    local ns pid
    for ns in "$HEAD_NS" "$WORKER_NS"; do
        if ip netns list | grep -q "^$ns\b"; then
            for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2> /dev/null; done
            ip netns del "$ns"
        fi
    done
}

# The user, its processes and its files; only ever a user this test created.
remove_user() {
    local pid pids
    if getent passwd "$U" | cut -d: -f5 | grep -qxF "$MARK"; then
        for _ in $(seq 50); do  # userdel refuses while a process of the user is still there
            pids=$(ps -o pid= -u "$U") || break
            for pid in $pids; do kill -9 "$pid" 2> /dev/null; done
            sleep 0.2
        done
        find /tmp /dev/shm -maxdepth 1 -user "$U" -exec rm -rf {} + 2> /dev/null
        userdel -r "$U" 2>&1 | grep -v "mail spool" >&2 || true
        ! getent passwd "$U" > /dev/null || echo "cluster test: could not remove the user $U" >&2
    fi
}

cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    ((rc)) && dump_logs
    [[ -n $UP && -z $DOWN ]] && timeout 120 in_head ray down -y "$W/local.yaml" > /dev/null 2>&1
    # Each sshd is PID 1 of its node's PID namespace and dies with its unshare (--kill-child), and the kernel
    # then kills the rest of the node. unshare ignores SIGTERM while it waits: SIGKILL.
    for pid in "${SSHD_PIDS[@]}"; do kill -9 "$pid" 2> /dev/null; done
    for pid in "${SSHD_PIDS[@]}"; do wait "$pid" 2> /dev/null; done
    remove_namespaces
    for acl in "${OPENED[@]}"; do setfacl --restore="$acl"; done
    remove_user
    [[ -n $T ]] && rm -rf "$T"
    [[ -n $OUR_RUNDIR ]] && rmdir /run/sshd
    [[ -n $OUR_POLICY ]] && rm -f /usr/sbin/policy-rc.d
    if ((rc)); then echo "cluster test: FAILED after $(($(date +%s) - START)) s"; else
        echo "cluster test: passed in $(($(date +%s) - START)) s"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $EUID == 0 ]] || die "needs root (network namespaces, sshd, a dedicated user)"
[[ -x $VENV/bin/ray ]] || die "no $VENV: run make install first"
T=$(mktemp -d /tmp/promptswitch-cluster-test.XXXXXX)  # root's: host key, sshd configs and logs, saved ACLs

log "packages"
missing=()
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
command -v ssh > /dev/null || missing+=(openssh-client)
command -v rsync > /dev/null || missing+=(rsync)
command -v ip > /dev/null || missing+=(iproute2)
command -v curl > /dev/null || missing+=(curl)
command -v setfacl > /dev/null || missing+=(acl)
if ((${#missing[@]})); then
    # Debian would start the packaged sshd on every address at install time; policy-rc.d says no.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        OUR_POLICY=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
echo "openssh-server, rsync, iproute2, curl, acl: present"

log "user $U"
remove_namespaces
remove_user  # left by a run that was killed
getent passwd "$U" > /dev/null ||
    useradd --create-home --shell /bin/bash --password '*' --comment "$MARK" "$U"
getent passwd "$U" | cut -d: -f5 | grep -qxF "$MARK" || die "user $U exists and is not this test's"
# The user must reach the project and the interpreter of its .venv (e.g. pyenv's, under /root): each
# folder on the way that it cannot pass gets an ACL entry for this user alone, restored at the end.
for path in "$ROOT" "$(readlink -f "$VENV/bin/python")"; do
    dir=$path
    while [[ $dir != / ]]; do
        if ! runuser -u "$U" -- test -x "$dir"; then
            getfacl -p "$dir" > "$T/acl.${#OPENED[@]}" 2> /dev/null
            OPENED+=("$T/acl.${#OPENED[@]}")
            setfacl -m "u:$U:x" "$dir"
        fi
        dir=$(dirname "$dir")
    done
done
runuser -u "$U" -- "$VENV/bin/python" -c "import orchestrator, ray" || die "$U cannot import the project"
runuser -u "$U" -- mkdir -p "$W/tmp" "$H/.ssh"
runuser -u "$U" -- ssh-keygen -q -t ed25519 -N '' -f "$H/.ssh/id_ed25519"
runuser -u "$U" -- cp "$H/.ssh/id_ed25519.pub" "$H/.ssh/authorized_keys"
chmod 600 "$H/.ssh/authorized_keys"

log "network namespaces $HEAD_NS ($HEAD_IP) and $WORKER_NS ($WORKER_IP)"
ip netns add "$HEAD_NS"
ip netns add "$WORKER_NS"
ip link add ps-head netns "$HEAD_NS" type veth peer name ps-worker netns "$WORKER_NS"
ip -n "$HEAD_NS" addr add "$HEAD_IP/24" dev ps-head
ip -n "$WORKER_NS" addr add "$WORKER_IP/24" dev ps-worker
for ns in "$HEAD_NS" "$WORKER_NS"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$([[ $ns == "$HEAD_NS" ]] && echo ps-head || echo ps-worker)" up
done

log "sshd on $HEAD_IP and $WORKER_IP, for $U only, with a generated key"
ssh-keygen -q -t ed25519 -N '' -f "$T/host_key"
[[ -d /run/sshd ]] || { mkdir -p /run/sshd && OUR_RUNDIR=1; }
for node in head worker; do
    ip=$([[ $node == head ]] && echo "$HEAD_IP" || echo "$WORKER_IP")
    ns=$([[ $node == head ]] && echo "$HEAD_NS" || echo "$WORKER_NS")
    cat > "$T/sshd-$node.conf" << EOF
ListenAddress $ip
Port 22
HostKey $T/host_key
PidFile $T/sshd-$node.pid
AllowUsers $U
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
X11Forwarding no
PrintMotd no
MaxSessions 50
MaxStartups 50
EOF
    ip netns exec "$ns" unshare --pid --fork --mount-proc --kill-child \
        /usr/sbin/sshd -D -f "$T/sshd-$node.conf" -E "$T/sshd-$node.log" &
    SSHD_PIDS+=($!)
done
for ip in "$HEAD_IP" "$WORKER_IP"; do
    for _ in $(seq 50); do
        in_head ssh -q -i "$H/.ssh/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 "$U@$ip" true && continue 2
        sleep 0.2
    done
    die "no ssh login to $U@$ip"
done
echo "ssh to $U@$HEAD_IP and $U@$WORKER_IP: ok"

log "synthetic data, the cluster's Ray token, cluster.yaml's local variant"
cd "$ROOT"
in_head promptswitch data synth --out "$W/data" --videos 24 --seed 11
in_head ray get-auth-token --generate > /dev/null 2>&1
in_head python -m tests.cluster.local_variant --head-ip "$HEAD_IP" --worker-ip "$WORKER_IP" --user "$U" \
    --key "$H/.ssh/id_ed25519" --venv "$VENV" --workdir "$W" --out "$W/local.yaml"

log "ray up"
UP=1
# Autoscaler v1: v2, Ray's default, counts the local provider's head as the one node of its single node
# type and so never starts the worker of worker_ips (Ray 2.60).
in_head env RAY_UP_enable_autoscaler_v2=0 ray up -y --no-config-cache "$W/local.yaml" \
    > "$W/ray-up.log" 2>&1 || die "ray up failed"
in_head python -m tests.cluster.report wait-nodes --address "$HEAD_IP:6379" --count 2 --timeout 240
mlflow_up() { in_head curl -sf "http://$HEAD_IP:5000/health" > /dev/null; }
for _ in $(seq 120); do
    mlflow_up && break
    sleep 1
done
mlflow_up || die "no MLflow server on the head"

log "ray submit train.py (demo config, $STEPS steps)"
in_head ray submit "$W/local.yaml" "$ROOT/train.py" -- --config promptswitch/configs/demo.yaml \
    "name=$RUN" "data.manifest=$W/data/manifest.parquet" "storage_path=$W/runs" "train.max_steps=$STEPS" \
    train.eval_every_steps=2 train.batch_size=8 train.cpus_per_worker=0.5 train.log_every_steps=1 \
    2>&1 | tee "$W/submit.log"

log "report"
in_head python -m tests.cluster.report check --address "$HEAD_IP:6379" \
    --tracking-uri "http://$HEAD_IP:5000" --run-name "$RUN" --steps "$STEPS" --worker-ip "$WORKER_IP"
for ns in "$HEAD_NS" "$WORKER_NS"; do
    echo "TCP listening sockets in $ns, by address (the namespace has only lo and the veth):" \
        "$(ip netns exec "$ns" ss -H -ltn | awk '{sub(/:[0-9]+$/, "", $4); print $4}' | sort | uniq -c |
            awk '{printf "%s%s x%s", sep, $2, $1; sep = ", "}')"
done

log "ray down"
in_head ray down -y "$W/local.yaml" > "$W/ray-down.log" 2>&1 || die "ray down failed"
DOWN=1
left=$(ray_processes "$HEAD_NS")
[[ -z $left ]] || die "ray down left Ray running on the head:"$'\n'"$left"
echo "head: no Ray process left"
# The local provider's `ray down` runs `ray stop` on the head only (EC2 would terminate the workers); a
# worker's raylet only exits by itself a minute or two after the GCS is gone. An operator's `ray stop`:
in_head ssh -q -i "$H/.ssh/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null "$U@$WORKER_IP" "bash --login -c -i 'ray stop'" > /dev/null 2>&1
left=$(ray_processes "$WORKER_NS")
[[ -z $left ]] || die "ray stop left Ray running on the worker:"$'\n'"$left"
echo "worker: no Ray process left after ray stop there"
