#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying `masker-wf --slurm` without a cluster.
#
#   workflows/slurm/local_slurm.sh start    # ~1 s; prints the export line clients need (SLURM_CONF)
#   workflows/slurm/local_slurm.sh status
#   workflows/slurm/local_slurm.sh stop     # ends the three daemons it started, by PID
#
# Needs Debian/Ubuntu's `slurm-wlm` (slurmctld, slurmd, client tools) and `munge`, and root (slurmd
# must be able to launch jobs). Everything lives in $SLURM_LOCAL_DIR (default /tmp/masker-wf-slurm):
# slurm.conf, munge key and socket, controller state, spool, logs and PID files. Nothing in /etc is
# touched, so a system-wide SLURM or munge keeps working; clients select this cluster with
#   export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf
# Settings suit containers: processes tracked via /proc (no cgroups), no CPU binding, no
# accounting. Ports are picked free at start, so several such clusters can coexist.
# SLURM_LOCAL_EXTRA adds slurm.conf lines, e.g. SLURM_LOCAL_EXTRA=MaxArraySize=10 to see how
# `masker-wf --slurm` splits a dataset into several job arrays.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/masker-wf-slurm}
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/socket
export SLURM_CONF=$CONF
PATH=$PATH:/usr/sbin:/sbin

need() { command -v "$1" >/dev/null || { echo "missing program: $1 (apt-get install slurm-wlm munge)" >&2; exit 1; }; }

alive() { [ -s "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

write_conf() {
    local user mem_kb
    user=$(id -un)
    mem_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    cat >"$CONF" <<EOF
# written by local_slurm.sh on $(date -u +%FT%TZ)
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pidfile
SlurmdPidFile=$DIR/slurmd.pidfile
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
ReturnToService=2
NodeName=localhost CPUs=$(nproc) RealMemory=$((mem_kb / 1024 * 3 / 4)) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
${SLURM_LOCAL_EXTRA:-}
EOF
}

start() {
    local t0 i
    t0=$(date +%s%N)
    for prog in munged slurmctld slurmd sbatch sinfo; do need "$prog"; done
    if alive slurmctld; then echo "already running (slurmctld PID $(cat "$DIR/slurmctld.pid"))"; return 0; fi
    rm -rf "$DIR/state" "$DIR/spool"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
    chmod 700 "$DIR/munge"
    if [ ! -s "$DIR/munge/key" ]; then
        dd if=/dev/urandom of="$DIR/munge/key" bs=1024 count=1 status=none
    fi
    chmod 400 "$DIR/munge/key"

    munged --foreground --force --key-file="$DIR/munge/key" --socket="$SOCKET" \
        --pid-file="$DIR/munge/pidfile" --seed-file="$DIR/munge/seed" \
        --log-file="$DIR/log/munged.log" >>"$DIR/log/munged.out" 2>&1 &
    echo $! >"$DIR/munged.pid"
    for i in $(seq 100); do [ -S "$SOCKET" ] && break; sleep 0.05; done
    [ -S "$SOCKET" ] || { echo "munged did not start, see $DIR/log/" >&2; stop; exit 1; }

    write_conf
    slurmctld -D -i >>"$DIR/log/slurmctld.out" 2>&1 &
    echo $! >"$DIR/slurmctld.pid"
    slurmd -D -N localhost >>"$DIR/log/slurmd.out" 2>&1 &
    echo $! >"$DIR/slurmd.pid"

    for i in $(seq 600); do
        case $(sinfo -h -o %T 2>/dev/null) in idle* | mixed* | allocated*) break ;; esac
        sleep 0.1
    done
    if ! sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "node did not come up within 60 s; logs in $DIR/log/" >&2
        stop
        exit 1
    fi
    echo "local SLURM up in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    echo "export SLURM_CONF=$CONF"
}

stop() {
    # leftover jobs first, while the controller can still cancel them
    if alive slurmctld; then
        scancel --user="$(id -un)" 2>/dev/null || true
        sleep 0.5
    fi
    local name pid i
    for name in slurmd slurmctld munged; do
        [ -s "$DIR/$name.pid" ] || continue
        pid=$(cat "$DIR/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
        fi
        rm -f "$DIR/$name.pid"
    done
    echo "local SLURM stopped"
}

status() {
    local name
    for name in munged slurmctld slurmd; do
        if alive "$name"; then echo "$name: running, PID $(cat "$DIR/$name.pid")"; else echo "$name: not running"; fi
    done
    if alive slurmctld; then sinfo; squeue; fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (state in \$SLURM_LOCAL_DIR, default $DIR)" >&2; exit 2 ;;
esac
