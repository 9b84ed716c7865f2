#!/usr/bin/env bash
# A private single-node SLURM cluster for the tests (Debian/Ubuntu, run as root, no systemd needed).
#   cluster.sh install    apt packages slurmctld slurmd slurm-client munge (idempotent)
#   cluster.sh start      write $MEC_SLURM_DIR/slurm.conf, start private munged/slurmctld/slurmd, wait for the node
#   cluster.sh stop       cancel jobs and stop the daemons this script started
#   cluster.sh status
# Everything lives in MEC_SLURM_DIR (default /tmp/mec-slurm): slurm.conf, munge key and socket, state, logs and
# pid files. The daemons listen on ports MEC_SLURM_PORT and MEC_SLURM_PORT+1 (default 16817/16818, not SLURM's
# 6817/6818), and /etc/slurm, /etc/munge and /run/munge are never touched, so a machine's own SLURM keeps
# working. Every slurm command must see this cluster's configuration: `export SLURM_CONF=$MEC_SLURM_DIR/slurm.conf`.
set -euo pipefail

BASE=${MEC_SLURM_DIR:-/tmp/mec-slurm}
PORT=${MEC_SLURM_PORT:-16817}
NODE=$(hostname -s)
CPUS=$(nproc)
RUN=$BASE/run
LOG=$BASE/log
MUNGE=$BASE/munge
export SLURM_CONF=$BASE/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "[mec-slurm] $*" >&2; }
# a pid file whose process is alive and not a zombie
alive() { [[ -s $1 ]] && ps -o stat= -p "$(cat "$1")" 2>/dev/null | grep -qv '^Z'; }
wait_for() { local tries=$1; shift; for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.1; done; return 1; }

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

write_config() {
  mkdir -p "$BASE"/{state,spool} "$LOG" "$RUN"
  cat > "$SLURM_CONF" <<EOF
# written by tests/slurm/cluster.sh: a one-node cluster for the MEC pipeline's tests
ClusterName=mectest
SlurmctldHost=${NODE}(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# the private munged; cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it every job takes the node's whole memory and jobs run one at a time
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
InactiveLimit=0
KillWait=5
# finished jobs stay visible to squeue (Snakemake's squeue status mode and the tests read them)
MinJobAge=300
Waittime=0
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
}

munge_ok() { munge -S "$MUNGE/munge.socket" -n 2>/dev/null | unmunge -S "$MUNGE/munge.socket" >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return 0; fi
  mkdir -p "$MUNGE"
  chmod 700 "$MUNGE"
  [[ -s $MUNGE/munge.key ]] || mungekey --create --keyfile="$MUNGE/munge.key"
  chmod 400 "$MUNGE/munge.key"
  /usr/sbin/munged --force --socket="$MUNGE/munge.socket" --key-file="$MUNGE/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$MUNGE/munged.seed"
  wait_for 50 munge_ok
}

node_ready() {
  local state
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  case $state in
    idle | mix | alloc) return 0 ;;
    drain* | down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  return 1
}

start() {
  install
  if alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd.pid" && node_ready; then say "already running"; return 0; fi
  write_config
  start_munge
  alive "$RUN/slurmctld.pid" || { /usr/sbin/slurmctld -i -f "$SLURM_CONF"; wait_for 100 alive "$RUN/slurmctld.pid"; }
  alive "$RUN/slurmd.pid" || { /usr/sbin/slurmd -f "$SLURM_CONF"; wait_for 100 alive "$RUN/slurmd.pid"; }
  wait_for 300 node_ready || { say "node $NODE did not become idle; logs in $LOG"; return 1; }
  say "node $NODE ready (partition debug, $CPUS CPUs)"
}

stop() {
  if alive "$RUN/slurmctld.pid"; then
    scancel --user="$(id -un)" 2>/dev/null || true
    wait_for 100 bash -c '[[ -z $(squeue -h 2>/dev/null) ]]' || true
  fi
  for daemon in slurmd slurmctld munged; do
    if alive "$RUN/$daemon.pid"; then
      pid=$(cat "$RUN/$daemon.pid")
      kill -TERM "$pid"
      wait_for 300 bash -c "! ps -o stat= -p $pid 2>/dev/null | grep -qv '^Z'" || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$daemon.pid"
  done
}

status() {
  for daemon in munged slurmctld slurmd; do
    if alive "$RUN/$daemon.pid"; then echo "$daemon: running"; else echo "$daemon: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
