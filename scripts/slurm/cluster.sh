#!/usr/bin/env bash
# A throw-away single-node SLURM on localhost, for testing the job scripts against the real scheduler (CI does
# this; see .ci/run). Needs root and Debian's packages:
#   apt-get update && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
#
#   scripts/slurm/cluster.sh up       # write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd; wait until idle
#   scripts/slurm/cluster.sh down     # cancel every job, wait for the queue to empty, stop the three daemons
#   scripts/slurm/cluster.sh status   # sinfo and squeue
#
# One node, `localhost`, with CPUs=max(nproc, PFO_SLURM_CPUS=4) (more than the hardware is allowed by
# SlurmdParameters=config_overrides) and no memory tracking. Two partitions over it: `debug` (default, low
# priority, its jobs are preempted by requeue after a 30 s grace time, with USR1 sent at once) and `high`.
# Requeue is fast (cred_expire=10, a scheduler pass every 1-2 s): a requeued job restarts in about 10 s.
# `up` refuses to overwrite a slurm.conf it did not write (a real cluster's); `down` only stops the daemons named
# in the pid files of this configuration.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# pfo throw-away test cluster (scripts/slurm/cluster.sh)"
STATE=/var/spool/pfo-slurm
LOGS=/var/log/pfo-slurm
RUN=/run/pfo-slurm
CPUS=$(( $(nproc) > ${PFO_SLURM_CPUS:-4} ? $(nproc) : ${PFO_SLURM_CPUS:-4} ))

say() { echo "cluster.sh: $*" >&2; }

write_config() {
  if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    say "$CONF exists and was not written by this script; refusing to overwrite it"
    exit 1
  fi
  mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS" "$RUN"
  cat > "$CONF" <<EOF
$MARKER
ClusterName=pfotest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
SchedulerParameters=bf_interval=1,sched_interval=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=high Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # stop the daemon named in a pid file, waiting up to 20 s
  local pidfile=$1 pid
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

up() {
  for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
      say "$tool not found: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
      exit 1
    }
  done
  write_config
  # munge refuses to run as root ("Logfile is insecure"): run it as its own user
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! alive /run/munge/munged.pid; then
    [ -f /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create
    runuser -u munge -- /usr/sbin/munged
  fi
  alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld -c   # -c: no jobs carried over from an earlier cluster
  alive "$RUN/slurmd.pid" || /usr/sbin/slurmd -N localhost
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle*|mixed*|allocated*) say "up: node localhost $state, $CPUS CPUs, partitions debug (default) and high"; return 0 ;;
      down*|drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  say "the node did not become idle (state '${state}'); logs in $LOGS"
  exit 1
}

down() {
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    say "$CONF was not written by this script; leaving that cluster alone"
    exit 1
  fi
  if alive "$RUN/slurmctld.pid"; then
    # stopping slurmd does not kill running steps: cancel everything and wait for the queue to empty first
    squeue -h -o %i | xargs -r scancel --quiet 2>/dev/null || true
    for _ in $(seq 120); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
    [ -n "$(squeue -h -o %i 2>/dev/null)" ] && say "jobs still listed after 60 s: $(squeue -h -o '%i %T' | tr '\n' ' ')"
  fi
  stop_pidfile "$RUN/slurmd.pid"
  stop_pidfile "$RUN/slurmctld.pid"
  stop_pidfile /run/munge/munged.pid
  rm -rf "$STATE"
  say "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
