#!/usr/bin/env bash
# A real single-node Slurm cluster for the test suite: munged, MariaDB, slurmdbd,
# slurmctld and slurmd on 127.0.0.1, all state under one scratch directory.
#
#   cluster.sh start    install what is missing, start what is not running (root)
#   cluster.sh stop     shut every daemon down (root)
#   cluster.sh status   exit 0 iff the cluster answers and its node is usable
#
# Environment: LLM_SLURM_DIR (scratch directory, default /tmp/llm-slurm),
# LLM_SLURM_DB_PORT (MariaDB port on 127.0.0.1, default 3307).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${LLM_SLURM_DIR:-/tmp/llm-slurm}
DB_PORT=${LLM_SLURM_DB_PORT:-3307}
# A throwaway database that only listens on 127.0.0.1; the password guards nothing.
DB_PASS=llm-slurm-test
CLUSTER=llm
PARTITION=debug
HOST=$(uname -n | cut -d. -f1)
CONF=$DIR/etc/slurm.conf
# Debian's clients read this path, so sbatch/sacct work in any subprocess.
SYSTEM_CONF=/etc/slurm/slurm.conf

export PATH=$PATH:/usr/sbin:/sbin
# slurmdbd has no -f: it reads slurmdbd.conf from the directory of SLURM_CONF.
export SLURM_CONF=$CONF
export DEBIAN_FRONTEND=noninteractive

T0=$EPOCHREALTIME
say() { awk -v t="$EPOCHREALTIME" -v t0="$T0" -v m="$*" 'BEGIN { printf "[cluster.sh %5.1fs] %s\n", t - t0, m }' >&2; }
die() { say "ERROR: $*"; exit 1; }

pidfile() {
  case $1 in
    munged) echo "$DIR/munge/munged.pid" ;;
    mariadbd) echo "$DIR/mysql/mariadbd.pid" ;;
    *) echo "$DIR/run/$1.pid" ;;
  esac
}

# The pid file must name a live process of that daemon; after a reboot a stale
# pid may belong to something else.
running() {
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
  [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out waiting for $what (logs in $DIR/log)"
    sleep 0.2
  done
}

install_packages() {
  local missing=0 cmd
  for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
    command -v "$cmd" >/dev/null || missing=1
  done
  ((missing)) || return 0
  say "installing Slurm, munge and MariaDB from Debian"
  apt-get update -qq
  # The maintainer scripts' attempts to start the services do not matter
  # (containers usually forbid them): this script starts its own daemons.
  apt-get install -y -qq slurmctld slurmd slurm-client munge slurmdbd mariadb-server >"$DIR/log/apt.log" 2>&1 ||
    die "apt-get install failed, see $DIR/log/apt.log"
}

render() { # render TEMPLATE OUTPUT MODE
  local mem_mb
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@DIR@|$DIR|g" \
    -e "s|@CPUS@|$(nproc)|g" -e "s|@MEMORY_MB@|$mem_mb|g" -e "s|@PARTITION@|$PARTITION|g" \
    -e "s|@DB_PORT@|$DB_PORT|g" -e "s|@DB_PASS@|$DB_PASS|g" "$HERE/$1" >"$2.tmp"
  chmod "$3" "$2.tmp"
  mv "$2.tmp" "$2"
}

write_configs() {
  render slurm.conf.in "$CONF" 644
  render slurmdbd.conf.in "$DIR/etc/slurmdbd.conf" 600 # slurmdbd refuses a readable one
  install -D -m 644 "$CONF" "$SYSTEM_CONF"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munged() {
  # munged runs as its own user and checks that its directories are private.
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 "$DIR/munge"
  runuser -u munge -- munged --pid-file="$(pidfile munged)" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" || die "munged failed, see $DIR/munge/munged.log"
  wait_until 20 munged munge_works
}

mariadb_sql() { mariadb --no-defaults --socket="$DIR/mysql/mariadbd.sock" -u root -e "$1"; }

start_mariadbd() {
  # --no-defaults keeps Debian's /etc/mysql settings (socket, datadir) out of it.
  if [[ ! -d $DIR/mysql/data/mysql ]]; then
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
  fi
  setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" \
    --socket="$DIR/mysql/mariadbd.sock" --pid-file="$(pidfile mariadbd)" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
    --log-error="$DIR/log/mariadbd.log" </dev/null >/dev/null 2>&1 &
  wait_until 60 mariadbd mariadb-admin --no-defaults --socket="$DIR/mysql/mariadbd.sock" ping
  mariadb_sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
  slurmdbd || die "slurmdbd failed, see $DIR/log/slurmdbd.log"
  # The first start creates the accounting tables, which takes a few seconds.
  wait_until 60 slurmdbd sacctmgr -n show cluster
  if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurmctld() {
  slurmctld -f "$CONF" || die "slurmctld failed, see $DIR/log/slurmctld.log"
  wait_until 30 slurmctld scontrol ping
}

start_slurmd() { slurmd -f "$CONF" || die "slurmd failed, see $DIR/log/slurmd.log"; }

node_state() { timeout 10 sinfo -h -o %T 2>/dev/null; }

node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

# A node drained by an earlier run (say, killed mid-job) stays drained across
# restarts; give it back once, then wait for it to be idle.
wait_for_idle() {
  local deadline=$((SECONDS + 60)) resumed=0 state
  while state=$(node_state); [[ $state != idle ]]; do
    if [[ $state == drain* || $state == down* ]] && ((!resumed)); then
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
      resumed=1
    fi
    ((SECONDS < deadline)) || die "node is '$state', not idle: $(sinfo -h -R)"
    sleep 0.2
  done
}

cmd_start() {
  [[ $EUID -eq 0 ]] || die "start needs root"
  mkdir -p "$DIR"/{etc,run,log,state/slurmctld,state/slurmd,mysql}
  chmod 755 "$DIR"
  exec 9>"$DIR/lock"
  flock 9 # concurrent starts (parallel test sessions) take turns
  install_packages
  write_configs
  local started=0 daemon
  for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
    running "$daemon" && continue
    # A munged that the package started (where policy allows it) serves as well.
    [[ $daemon == munged ]] && munge_works && continue
    say "starting $daemon"
    # Closing the lock's descriptor keeps the daemons from holding the lock.
    "start_$daemon" 9>&-
    started=1
  done
  if ((started)) || ! node_usable; then
    wait_for_idle
    timeout 60 srun -N1 -n1 true || die "smoke test 'srun -N1 -n1 true' failed"
  fi
  local problem
  problem=$(status_problem)
  [[ -z $problem ]] || die "cluster is not usable: $problem"
  say "cluster '$CLUSTER' is up (config $SYSTEM_CONF, scratch $DIR)"
}

# stop_daemons NAME...: SIGTERM by pid file, then wait (SIGKILL after 30 s).
stop_daemons() {
  local name pid pids=() deadline=$((SECONDS + 30))
  for name in "$@"; do
    running "$name" || continue
    pid=$(cat "$(pidfile "$name")")
    kill "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    while [[ -e /proc/$pid ]]; do
      if ((SECONDS >= deadline)); then
        say "pid $pid ignored SIGTERM; killing it"
        kill -9 "$pid" 2>/dev/null || true
      fi
      sleep 0.2
    done
  done
}

cmd_stop() {
  [[ $EUID -eq 0 ]] || die "stop needs root"
  [[ -d $DIR ]] || return 0
  exec 9>"$DIR/lock"
  flock 9
  # scontrol shutdown stops slurmctld and every slurmd cleanly (state saved).
  if running slurmctld; then
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  stop_daemons slurmctld slurmd
  stop_daemons slurmdbd # it may still write to the database
  stop_daemons mariadbd munged
  say "cluster stopped"
}

# Prints why the cluster is unusable, or nothing. Local checks come first: a
# client pointed at a missing config or a dead controller retries for up to a
# minute before it gives up.
status_problem() {
  command -v sinfo >/dev/null || { echo "Slurm is not installed"; return; }
  [[ -r $CONF ]] || { echo "no config at $CONF"; return; }
  munge_works || { echo "munged is not answering"; return; }
  local daemon
  # The pid files of munged and mariadbd are private; the munge and sacctmgr
  # round trips vouch for them.
  for daemon in slurmd slurmctld slurmdbd; do
    running "$daemon" || { echo "$daemon is not running"; return; }
  done
  timeout 10 scontrol ping >/dev/null 2>&1 || { echo "slurmctld is not answering"; return; }
  node_usable || { echo "node state is '$(node_state)'"; return; }
  [[ -n $(timeout 10 sacctmgr -n -P show cluster "$CLUSTER" format=cluster 2>/dev/null) ]] ||
    echo "accounting (slurmdbd) is not answering"
}

cmd_status() {
  local problem
  problem=$(status_problem)
  if [[ -n $problem ]]; then
    echo "down: $problem"
    return 1
  fi
  echo "up: node $HOST is $(node_state), partition $PARTITION, config $CONF"
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
