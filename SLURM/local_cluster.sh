#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for CI and for trying the SLURM path:
#
#     SLURM/local_cluster.sh start     # install if needed, start munged/slurmctld/slurmd, wait idle
#     SLURM/local_cluster.sh status    # exit 0 if the cluster answers and the node is usable
#     SLURM/local_cluster.sh stop      # cancel its jobs, stop the daemons it started, by PID
#
# Runs as root, without systemd (containers, CI). Debian packages slurmctld, slurmd,
# slurm-client and munge; munged runs as user munge with the key the package generated.
# One node (this host, `nproc` CPUs, a few GB of RealMemory), partition `debug` (default),
# no accounting, proctrack/linuxproc + task/none (no cgroups needed), JobRequeue=1.
# Daemons write their PIDs to $BB_SLURM_DIR/*.pid; `stop` signals exactly those PIDs.
# The config goes to /etc/slurm/slurm.conf (where sinfo/sbatch/srun look), marked as ours;
# a slurm.conf written by someone else is never overwritten.
#
# Environment: BB_SLURM_DIR (state, logs, PIDs; default /tmp/batch-bench-slurm),
# BB_SLURM_MEM_MB (RealMemory; default min(4096, 80% of MemTotal)),
# BB_SLURM_TIMEOUT_S (wait for the node to be idle; default 90).
set -euo pipefail

DIR=${BB_SLURM_DIR:-/tmp/batch-bench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by batch-bench SLURM/local_cluster.sh"
NODE=$(hostname -s)
TIMEOUT=${BB_SLURM_TIMEOUT_S:-90}
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "local_cluster: error: $*" >&2; exit 1; }
log() { echo "local_cluster: $*" >&2; }

alive() {  # alive <pidfile>: the PID in the file is a live process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (installs packages, starts daemons)"; }

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    # policy-rc.d 101: packages must not try to start services (no systemd/init here)
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { ((created_policy)) && rm -f "$policy"; die "apt-get install ${missing[*]} failed"; }
    ((created_policy)) && rm -f "$policy"
    return 0
}

mem_mb() {
    if [[ -n ${BB_SLURM_MEM_MB:-} ]]; then echo "$BB_SLURM_MEM_MB"; return; fi
    local total_kb
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    local m=$((total_kb * 8 / 10 / 1024))
    echo $((m < 4096 ? m : 4096))
}

write_conf() {
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it"
    fi
    mkdir -p /etc/slurm "$DIR"/{state,spool,log}
    cat >"$CONF.tmp" <<EOF
$MARK (one-node CI cluster; safe to delete)
ClusterName=batchbench
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(mem_mb) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    id munge >/dev/null 2>&1 || die "user munge missing (munge package not installed correctly)"
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (the munge package generates it)"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    if alive /run/munge/munged.pid && munge -n | unmunge >/dev/null 2>&1; then
        return 0  # already running (ours or the system's): leave it, do not record its PID
    fi
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$DIR/munged.pid"  # ours: `stop` ends it
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }

cmd_status() {
    command -v sinfo >/dev/null || { log "sinfo not installed"; return 1; }
    local state
    state=$(node_state) || true
    [[ -n $state ]] || { log "no answer from slurmctld"; return 1; }
    echo "node $NODE: $state"
    [[ $state == idle* || $state == mix* || $state == alloc* ]]
}

cmd_start() {
    need_root
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && cmd_status >/dev/null 2>&1; then
        log "already running ($(node_state)); PIDs in $DIR"
        return 0
    fi
    local t0=$SECONDS
    install_packages
    write_conf
    start_munge
    if ! alive "$DIR/slurmctld.pid"; then
        # -c: clean start (no jobs/node state left from an earlier cluster)
        slurmctld -c || die "slurmctld failed to start; log: $DIR/log/slurmctld.log"
    fi
    if ! alive "$DIR/slurmd.pid"; then
        slurmd -N "$NODE" || die "slurmd failed to start; log: $DIR/log/slurmd.log"
    fi
    local state=""
    for _ in $(seq $((TIMEOUT * 2))); do
        state=$(node_state) || true
        [[ $state == idle* ]] && break
        # a node left "down"/"drained" by a previous run: bring it back
        [[ $state == down* || $state == drain* ]] && scontrol update nodename="$NODE" state=resume 2>/dev/null
        sleep 0.5
    done
    if [[ $state != idle* ]]; then
        echo "---- slurmctld.log (tail)" >&2; tail -n 20 "$DIR/log/slurmctld.log" >&2 || true
        echo "---- slurmd.log (tail)" >&2; tail -n 20 "$DIR/log/slurmd.log" >&2 || true
        die "node $NODE not idle after ${TIMEOUT}s (state: '${state:-no answer}')"
    fi
    log "up in $((SECONDS - t0))s: node $NODE idle, $(nproc) CPUs, $(mem_mb) MB, partition debug; PIDs in $DIR"
}

stop_pid() {  # stop_pid <name> <pidfile>: TERM, wait, KILL
    local name=$1 file=$2 pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then log "$name ($pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" || true; fi
        log "stopped $name ($pid)"
    fi
    rm -f "$file"
}

cmd_stop() {
    need_root
    if alive "$DIR/slurmctld.pid" && command -v squeue >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || true
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            for _ in $(seq 100); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.2; done
        fi
    fi
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$DIR/munged.pid"   # only when this script started it
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
