#!/usr/bin/env bash
# `make cluster-test`: README's cluster workflow, for real, on this one machine (root only).
#
# Three "hosts": network namespaces on a bridge, the head at 10.213.77.1, a worker node at 10.213.77.2
# (standing for a GPU worker) and a worker with cluster.yaml's decode label at 10.213.77.3, each with its
# own PID namespace (so one node's `ray stop` cannot see the other's processes) and an sshd on its own
# address for a dedicated user whose login shell finds the project's .venv. The nodes share one file
# system, as nodes share an NFS mount: the folder $W is the cluster's shared storage. An S3-compatible
# server (moto) on the head stands for the bucket.
#
# `ray up` of cluster.yaml's local variant (tests/cluster/local_variant.py), then two jobs with
# `ray submit train.py`, each checked through Ray's state API and MLflow (tests/cluster/report.py):
#   1. the demo cut to a few steps, starting from an open_clip checkpoint this script writes (read by the
#      workers), with the frame cache in the shared folder and checkpoints in s3://, logged to the head's
#      MLflow server: the run, the checkpoints in the bucket, where decoding and training ran;
#   2. a two-trial sweep with a sqlite store, which the job serves on the head's private address: both
#      trials' runs written from the worker nodes, the trials side by side, one on each worker.
# Then `ray down` (and `ray stop` on the workers, which the local provider's `ray down` leaves running).
# Nothing listens outside the namespaces; the trap removes the namespaces (and every process in them), the
# user and its files, even on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$ROOT/.venv
U=${CLUSTER_TEST_USER:-psray}
H=/home/$U
W=$H/ct                           # the cluster's files, the same path on both nodes; short for Ray's sockets
HEAD_NS=$U-head WORKER_NS=$U-worker DECODE_NS=$U-decode
HEAD_IP=10.213.77.1 WORKER_IP=10.213.77.2 DECODE_IP=10.213.77.3
NAMESPACES=("$HEAD_NS" "$WORKER_NS" "$DECODE_NS")
S3_PORT=5001 BUCKET=ps-runs
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
    for ns in "${NAMESPACES[@]}"; do
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

log "network namespaces $HEAD_NS ($HEAD_IP), $WORKER_NS ($WORKER_IP) and $DECODE_NS ($DECODE_IP)"
for ns in "${NAMESPACES[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
# A bridge in the head's namespace holds the head's address; each worker hangs on it by a veth pair.
ip -n "$HEAD_NS" link add ps-br type bridge
ip -n "$HEAD_NS" addr add "$HEAD_IP/24" dev ps-br
ip -n "$HEAD_NS" link set ps-br up
i=0
for node in "$WORKER_NS=$WORKER_IP" "$DECODE_NS=$DECODE_IP"; do
    i=$((i + 1))
    ip link add "ps-h$i" netns "$HEAD_NS" type veth peer name "ps-n$i" netns "${node%%=*}"
    ip -n "$HEAD_NS" link set "ps-h$i" master ps-br up
    ip -n "${node%%=*}" addr add "${node#*=}/24" dev "ps-n$i"
    ip -n "${node%%=*}" link set "ps-n$i" up
done

log "sshd on $HEAD_IP, $WORKER_IP and $DECODE_IP, for $U only, with a generated key"
ssh-keygen -q -t ed25519 -N '' -f "$T/host_key"
[[ -d /run/sshd ]] || { mkdir -p /run/sshd && OUR_RUNDIR=1; }
for node in "head=$HEAD_NS=$HEAD_IP" "worker=$WORKER_NS=$WORKER_IP" "decode=$DECODE_NS=$DECODE_IP"; do
    IFS== read -r node ns ip <<< "$node"
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
for ip in "$HEAD_IP" "$WORKER_IP" "$DECODE_IP"; do
    for _ in $(seq 50); do
        in_head ssh -q -i "$H/.ssh/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 "$U@$ip" true && continue 2
        sleep 0.2
    done
    die "no ssh login to $U@$ip"
done
echo "ssh to $U@$HEAD_IP, $U@$WORKER_IP and $U@$DECODE_IP: ok"

log "shared storage: synthetic data, an open_clip checkpoint; an S3 server on the head; the local variant"
cd "$ROOT"
in_head promptswitch data synth --out "$W/data" --videos 24 --seed 11
# A pretrained tiny CLIP in open_clip's format, as a user's ViT-B-32.pt would be: read by the workers.
in_head mkdir -p "$W/weights"
in_head python -c "import sys, torch; from model import create_model
torch.manual_seed(5); torch.save(create_model('tiny').clip.state_dict(), sys.argv[1])" "$W/weights/tiny-clip.pt"
# moto's S3 API on the head's private address; the credentials are moto's test values, not secrets.
S3_ENV=(AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1)
in_head env "${S3_ENV[@]}" setsid moto_server -H "$HEAD_IP" -p "$S3_PORT" > "$T/moto.log" 2>&1 < /dev/null &
for _ in $(seq 60); do
    in_head curl -s -o /dev/null "http://$HEAD_IP:$S3_PORT/" && break
    sleep 0.5
done
in_head env "${S3_ENV[@]}" python -c "import sys, pyarrow.fs as f
f.S3FileSystem(endpoint_override=sys.argv[1], scheme='http', allow_bucket_creation=True).create_dir(sys.argv[2])" \
    "$HEAD_IP:$S3_PORT" "$BUCKET"
STORAGE="s3://$BUCKET/runs?endpoint_override=$HEAD_IP:$S3_PORT&scheme=http&region=us-east-1"
in_head ray get-auth-token --generate > /dev/null 2>&1
env_flags=()
for e in "${S3_ENV[@]}"; do env_flags+=(--env "$e"); done
# 5 logical CPUs a worker: a sweep trial takes 3 for its training worker and 1 for its decoding, so two
# trials fit the cluster (10 CPUs) but not one node, and run one on each.
in_head python -m tests.cluster.local_variant --head-ip "$HEAD_IP" --worker-ip "$WORKER_IP" \
    --worker-ip "$DECODE_IP" --decode-ip "$DECODE_IP" --worker-cpus 5 "${env_flags[@]}" --user "$U" \
    --key "$H/.ssh/id_ed25519" --venv "$VENV" --workdir "$W" --out "$W/local.yaml"

log "ray up"
UP=1
# Autoscaler v1: v2, Ray's default, counts the local provider's head as the one node of its single node
# type and so never starts the workers of worker_ips (Ray 2.60).
in_head env RAY_UP_enable_autoscaler_v2=0 ray up -y --no-config-cache "$W/local.yaml" \
    > "$W/ray-up.log" 2>&1 || die "ray up failed"
in_head python -m tests.cluster.report wait-nodes --address "$HEAD_IP:6379" --count 3 --timeout 240
mlflow_up() { in_head curl -sf "http://$HEAD_IP:5000/health" > /dev/null; }
for _ in $(seq 120); do
    mlflow_up && break
    sleep 1
done
mlflow_up || die "no MLflow server on the head"

log "job 1: ray submit train.py (demo, $STEPS steps, pretrained weights, shared cache, s3:// checkpoints)"
# `ray submit` joins the arguments into one shell line on the head: the URI's & must be quoted for it.
in_head ray submit "$W/local.yaml" "$ROOT/train.py" -- --config promptswitch/configs/scratch.yaml \
    "name=$RUN" "data.manifest=$W/data/manifest.parquet" "'storage_path=$STORAGE'" \
    "model.pretrained=$W/weights/tiny-clip.pt" "data.cache_dir=$W/cache" "train.max_steps=$STEPS" \
    train.eval_every_steps=2 train.batch_size=8 train.cpus_per_worker=0.5 train.log_every_steps=1 \
    2>&1 | tee "$W/submit.log"

log "report on job 1"
in_head env "${S3_ENV[@]}" python -m tests.cluster.report check --address "$HEAD_IP:6379" \
    --tracking-uri "http://$HEAD_IP:5000" --run-name "$RUN" --steps "$STEPS" --worker-ip "$WORKER_IP" \
    --decode-ip "$DECODE_IP" --storage "$STORAGE"

log "job 2: ray submit train.py --sweep (two trials, a sqlite store served by the job)"
in_head tee "$W/sweep.yaml" > /dev/null << EOF
name: cluster-sweep
base: $H/promptswitch/configs/scratch.yaml
base_overrides:
  - data.manifest=$W/data/manifest.parquet
  - data.cache_dir=$W/cache
  - model.pretrained=$W/weights/tiny-clip.pt
  - storage_path=$W/runs
  - tracking.tracking_uri=sqlite:///$W/sweep-mlflow.db
trial_overrides:
  - train.max_steps=$STEPS
  - train.eval_every_steps=2
  - train.batch_size=8
  - train.num_workers=1
  - train.cpus_per_worker=3
  - train.log_every_steps=1
search: {algorithm: grid, num_samples: 1}
early_stopping: {grace_period: 2, reduction_factor: 2}
space:
  model.caption_weight: {choice: [0.3, 0.7]}
EOF
in_head ray submit "$W/local.yaml" "$ROOT/train.py" -- --sweep "$W/sweep.yaml" 2>&1 | tee "$W/sweep.log"

log "report on job 2"
in_head python -m tests.cluster.report check-sweep --address "$HEAD_IP:6379" \
    --tracking-uri "sqlite:///$W/sweep-mlflow.db" --sweep cluster-sweep --trials 2 --steps "$STEPS" \
    --worker-ip "$WORKER_IP" --worker-ip "$DECODE_IP"
for ns in "${NAMESPACES[@]}"; do
    echo "TCP listening sockets in $ns, by address (the namespace has only lo, its veth or the bridge):" \
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
for node in "$WORKER_NS=$WORKER_IP" "$DECODE_NS=$DECODE_IP"; do
    in_head ssh -q -i "$H/.ssh/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null "$U@${node#*=}" "bash --login -c -i 'ray stop'" > /dev/null 2>&1
    left=$(ray_processes "${node%%=*}")
    [[ -z $left ]] || die "ray stop left Ray running on ${node#*=}:"$'\n'"$left"
    echo "worker ${node#*=}: no Ray process left after ray stop there"
done
