#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the cluster tests (tests/cluster/). Debian / Ubuntu, as root.
#
#   .ci/slurm.sh up          install (apt) if needed, start munge, MariaDB, slurmdbd, slurmctld, slurmd; wait until
#                            the node is idle. Idempotent: daemons already running are left as they are.
#   .ci/slurm.sh down        cancel every job, stop the daemons `up` started (by their PID files), nothing else,
#                            and remove the slurm.conf / slurmdbd.conf it wrote
#   .ci/slurm.sh run CMD...  up, run CMD, down on exit (also on failure or Ctrl-C); exits with CMD's status
#   .ci/slurm.sh status      sinfo and the daemons' PIDs
#
# The cluster: ClusterName longtail-ci, one node (this host, CPUs and RealMemory from `slurmd -C`), partition
# `batch`, account `longtail_ci` for root, accounting in slurmdbd + MariaDB (snakemake-executor-plugin-slurm checks
# the account with sacctmgr and the job states with sacct). State, logs and the database live in $SLURM_CI_STATE
# (default /var/lib/longtail-slurm-ci) and are kept for the next `up`; slurm.conf and slurmdbd.conf are written to
# /etc/slurm while the cluster is up.
set -euo pipefail

STATE="${SLURM_CI_STATE:-/var/lib/longtail-slurm-ci}"
RUN="$STATE/run"
LOG="$STATE/log"
STARTED="$STATE/started"        # one daemon name per line: what `up` started, so `down` stops only those
CLUSTER=longtail-ci
PARTITION=batch
ACCOUNT=longtail_ci
DB_SOCKET=/run/mysqld/mysqld.sock   # the MariaDB client library's default: slurmdbd's StorageHost=localhost uses it
DB_PASS=longtail-ci-only            # a database reachable only through a root-owned local socket
MUNGE_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/longtail-slurm-ci.pid   # where the mysql user may write

log() { printf '[slurm.sh %(%H:%M:%S)T] %s\n' -1 "$*"; }

pid_alive() {  # pid_alive PIDFILE: the process in PIDFILE runs
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
    local limit=$1 what=$2 start=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - start >= limit )); then
            log "timed out after ${limit}s waiting for $what; logs in $LOG"
            return 1
        fi
        sleep 0.5
    done
}

mark_started() { grep -qx "$1" "$STARTED" 2>/dev/null || echo "$1" >>"$STARTED"; }

install_packages() {
    local missing=()
    for bin in slurmctld:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server; do
        command -v "${bin%%:*}" >/dev/null || missing+=("${bin##*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (apt)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

write_configs() {
    local node
    node=$(slurmd -C | head -1)   # NodeName=<host> CPUs=... RealMemory=...: this machine as slurmd sees it
    mkdir -p /etc/slurm "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd"
    cat >/etc/slurm/slurm.conf <<EOF
# Written by .ci/slurm.sh: a single-node test cluster, everything runs as root.
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
KillWait=5
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >/etc/slurm/slurmdbd.conf <<EOF
# Written by .ci/slurm.sh
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 /etc/slurm/slurmdbd.conf
}

start_munge() {
    pid_alive "$MUNGE_PID" && return
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    mark_started munged
    wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
    local data="$STATE/mysql"
    pid_alive "$MARIADB_PID" && return
    install -d -o mysql -g mysql /run/mysqld "$LOG/mariadb"
    if [ ! -d "$data/mysql" ]; then
        log "initialising the accounting database in $data"
        mariadb-install-db --user=mysql --datadir="$data" --skip-test-db --auth-root-authentication-method=socket \
            >"$LOG/mariadb-install.log" 2>&1
    fi
    # --skip-networking: only the local socket; no port is opened
    nohup mariadbd --user=mysql --datadir="$data" --socket="$DB_SOCKET" --skip-networking \
        --pid-file="$MARIADB_PID" --log-error="$LOG/mariadb/error.log" >/dev/null 2>&1 &
    mark_started mariadb
    wait_for 60 MariaDB mariadb --socket="$DB_SOCKET" -u root -e "SELECT 1"
    mariadb --socket="$DB_SOCKET" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
    pid_alive "$RUN/slurmdbd.pid" && return
    slurmdbd
    mark_started slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
}

add_associations() {  # the cluster, the test account and root's association with it (no-ops when present)
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account "$ACCOUNT" Description="longtail_seg CI" Organization=ci >/dev/null 2>&1 || true
    sacctmgr -i -Q add user root Account="$ACCOUNT" >/dev/null 2>&1 || true
    sacctmgr -n -P list associations user=root account="$ACCOUNT" format=account | grep -qx "$ACCOUNT"
}

start_slurm_daemons() {
    if ! pid_alive "$RUN/slurmctld.pid"; then
        slurmctld
        mark_started slurmctld
        wait_for 60 slurmctld scontrol ping
    fi
    if ! pid_alive "$RUN/slurmd.pid"; then
        slurmd
        mark_started slurmd
    fi
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -1; }

wait_idle() {
    local start=$SECONDS state
    while (( SECONDS - start < 90 )); do
        state=$(node_state)
        case "$state" in
            idle|mixed|allocated) return 0 ;;
            down*|drain*) scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    log "the node did not become idle (state '$state'); see $LOG/slurmd.log and $LOG/slurmctld.log"
    return 1
}

up() {
    local start=$SECONDS
    install_packages
    mkdir -p "$STATE" "$RUN" "$LOG"
    touch "$STARTED"
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    add_associations
    start_slurm_daemons
    wait_idle
    log "up in $(( SECONDS - start ))s: $(sinfo --version), node $(hostname -s) $(node_state)," \
        "partition $PARTITION, account $ACCOUNT"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: TERM the process, KILL it after 30 s
    local pid
    [ -s "$2" ] || return 0
    pid=$(cat "$2")
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || { log "stopped $1 ($pid)"; return 0; }; sleep 0.5; done
    log "$1 ($pid) did not stop within 30 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    [ -f "$STARTED" ] || { log "nothing to stop (no $STARTED)"; return 0; }
    if grep -qx slurmctld "$STARTED" && pid_alive "$RUN/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            log "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs || true
            wait_for 30 "the jobs to end" sh -c '[ -z "$(squeue -h -o %i)" ]' || true
        fi
    fi
    local name
    for name in slurmd slurmctld slurmdbd mariadb munged; do
        grep -qx "$name" "$STARTED" || continue
        case "$name" in
            munged) stop_pidfile munged "$MUNGE_PID" ;;
            mariadb) stop_pidfile mariadb "$MARIADB_PID" ;;
            *) stop_pidfile "$name" "$RUN/$name.pid" ;;
        esac
    done
    rm -f "$STARTED"
    # without a controller, a slurm.conf makes every SLURM client wait ~9 s for it, and so every `snakemake` start
    # while the slurm executor plugin is installed (it asks `scontrol show config`): remove the ones `up` wrote
    local conf
    for conf in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
        if head -1 "$conf" 2>/dev/null | grep -q '^# Written by .ci/slurm.sh'; then rm -f "$conf"; fi
    done
}

status() {
    sinfo || true
    for f in "$RUN"/*.pid "$MARIADB_PID" "$MUNGE_PID"; do
        [ -s "$f" ] && echo "$(basename "$f" .pid): $(cat "$f") $(pid_alive "$f" && echo running || echo gone)"
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    run)
        shift
        [ $# -gt 0 ] || { echo "usage: $0 run COMMAND..." >&2; exit 2; }
        trap down EXIT
        up
        "$@"
        ;;
    *) echo "usage: $0 {up|down|status|run COMMAND...}" >&2; exit 2 ;;
esac
