#!/usr/bin/env bash
# A 3-node ZooKeeper ensemble on loopback with Debian's `zookeeper` package (no Docker, no daemon
# installed): the ensemble that `make demo-cluster` and tests/deploy/test_ensemble.py run against.
#
#   deploy/local-ensemble.sh start  [DIR]   start it (or the nodes of it that are down); prints the
#                                           connect string (last line of stdout)
#   deploy/local-ensemble.sh stop   [DIR]   stop the nodes this script started (by their PID files)
#   deploy/local-ensemble.sh status [DIR]   one line per node: port, PID, leader/follower/down
#                                           (exit 0: all serving, 1: some, 3: none running)
#   deploy/local-ensemble.sh connect-string [DIR]
#   deploy/local-ensemble.sh clean  [DIR]   stop, then delete DIR (data and logs)
#
# DIR defaults to $AUTOAI_ENSEMBLE_DIR, else ~/.cache/autoai/ensemble. Layout: DIR/zkN/{zoo.cfg,
# data/, zookeeper.log, pid}. The first start picks 9 free loopback ports below the kernel's
# ephemeral range (so that no outgoing connection takes one before ZooKeeper binds it) and writes
# the configs; later starts keep those ports and the data, so the connect string stays the same.
# Every command is idempotent and holds a lock on DIR, so two of them never race.
#
# A PID is only signalled when /proc/PID/cmdline is a QuorumPeerMain running this DIR's zoo.cfg:
# a stale PID file whose number was reused by another process is ignored, never killed.
#
# Environment: ZK_JAVA (java), ZK_JAVA_DIR (/usr/share/java), ZK_CONF_DIR (/etc/zookeeper/conf),
# ZK_HEAP (256m), ZK_TICK_MS (2000), ZK_START_TIMEOUT (seconds, 90).
set -euo pipefail

readonly NODES=3
readonly JARS=(zookeeper.jar zookeeper-jute.jar netty-codec.jar slf4j-api.jar slf4j-log4j12.jar
	log4j-1.2.jar) # netty-codec is missing from the Class-Path of Debian's zookeeper.jar
JAVA=${ZK_JAVA:-java}
JAVA_DIR=${ZK_JAVA_DIR:-/usr/share/java}
CONF_DIR=${ZK_CONF_DIR:-/etc/zookeeper/conf}
HEAP=${ZK_HEAP:-256m}
TICK_MS=${ZK_TICK_MS:-2000}
START_TIMEOUT=${ZK_START_TIMEOUT:-90}

say() { printf '%s\n' "$*" >&2; }
die() {
	say "local-ensemble: $*"
	exit 1
}

usage() {
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
	exit 2
}

# -- the directory -------------------------------------------------------------------------------

node_dir() { printf '%s/zk%s' "$DIR" "$1"; }
cfg_value() { sed -n "s/^$2=//p" "$(node_dir "$1")/zoo.cfg" 2>/dev/null | head -n 1; }
client_port() { cfg_value "$1" clientPort; }
configured() { [[ -f $DIR/zk1/zoo.cfg && -f $DIR/zk$NODES/zoo.cfg ]]; }

connect_string() {
	local i out=""
	for ((i = 1; i <= NODES; i++)); do
		out+="${out:+,}127.0.0.1:$(client_port "$i")"
	done
	printf '%s\n' "$out"
}

lock() {
	mkdir -p "$DIR"
	touch "$DIR/.autoai-ensemble" # marks the directory as ours (`clean` checks it)
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$DIR/.lock"
		flock -w 120 9 || die "another local-ensemble.sh holds $DIR/.lock"
	fi
}

# -- processes -----------------------------------------------------------------------------------

# The PID of node $1 when it is alive and is our ZooKeeper on our config; nothing otherwise.
node_pid() {
	local pidfile pid state cmdline
	pidfile="$(node_dir "$1")/pid"
	[[ -f $pidfile ]] || return 0
	pid=$(tr -dc '0-9' <"$pidfile")
	[[ -n $pid && -r /proc/$pid/cmdline ]] || return 0
	state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
	[[ $state != Z ]] || return 0
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
	if [[ $cmdline == *QuorumPeerMain*" $(node_dir "$1")/zoo.cfg"* ]]; then
		printf '%s\n' "$pid"
	fi
}

# A four-letter word's answer (empty when the node does not answer within 2 s).
four_letter_word() {
	# shellcheck disable=SC2016  # $1 and $2 are the inner shell's arguments
	timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf %s "$2" >&3 && cat <&3' \
		_ "$1" "$2" 2>/dev/null || true
}

# leader, follower, standalone; empty when the node is not serving.
node_mode() {
	four_letter_word "$(client_port "$1")" srvr | sed -n 's/^Mode: //p'
}

classpath() {
	local jar cp=""
	[[ -d $CONF_DIR ]] && cp=$CONF_DIR
	for jar in "${JARS[@]}"; do
		[[ -f $JAVA_DIR/$jar ]] || die "$JAVA_DIR/$jar is missing: apt-get install -y zookeeper"
		cp+="${cp:+:}$JAVA_DIR/$jar"
	done
	printf '%s\n' "$cp"
}

launch() {
	local d pid
	d=$(node_dir "$1")
	# shellcheck disable=SC2054  # INFO,CONSOLE is one log4j argument
	local args=("$JAVA" "-Xmx$HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto
		-Djava.net.preferIPv4Stack=true "-Dzookeeper.log.dir=$d"
		-Dzookeeper.root.logger=INFO,CONSOLE "-Dlog4j.configuration=file:$CONF_DIR/log4j.properties"
		-cp "$CP" org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg")
	# Own session: a Ctrl-C in the terminal that ran `start` does not reach the servers. In a
	# script (no job control) the background child is no group leader, so setsid execs in place
	# and $! is the JVM's PID. 9>&-: the server must not inherit (and keep) our lock.
	if command -v setsid >/dev/null 2>&1; then
		setsid "${args[@]}" >>"$d/zookeeper.log" 2>&1 </dev/null 9>&- &
	else
		nohup "${args[@]}" >>"$d/zookeeper.log" 2>&1 </dev/null 9>&- &
	fi
	pid=$!
	printf '%s\n' "$pid" >"$d/pid"
	say "started zk$1 on 127.0.0.1:$(client_port "$1") (pid $pid, log $d/zookeeper.log)"
}

# Stop the given nodes: SIGTERM, SIGKILL to those still running 10 s later; only PIDs that
# node_pid vouches for.
stop_nodes() {
	local i pid pids=() waited=0 entry
	for i in "$@"; do
		pid=$(node_pid "$i")
		if [[ -n $pid ]]; then
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$i:$pid")
		fi
	done
	for entry in "${pids[@]+"${pids[@]}"}"; do
		i=${entry%%:*}
		pid=${entry#*:}
		while [[ -n $(node_pid "$i") ]] && ((waited < 100)); do
			sleep 0.1
			waited=$((waited + 1))
		done
		if [[ -n $(node_pid "$i") ]]; then
			kill -KILL "$pid" 2>/dev/null || true
			say "zk$i (pid $pid) did not stop on SIGTERM within 10 s: killed"
		else
			say "stopped zk$i (pid $pid)"
		fi
	done
	for i in "$@"; do
		[[ -n $(node_pid "$i") ]] || rm -f "$(node_dir "$i")/pid"
	done
}

# -- configuration -------------------------------------------------------------------------------

port_in_use() {
	if command -v ss >/dev/null 2>&1; then
		[[ -n $(ss -Htan "sport = :$1" 2>/dev/null) ]]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# 3 ports per node (client, quorum, election), distinct and free now, below the ephemeral range.
pick_ports() {
	local low high p taken=" " picked=()
	read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
	high=$((low - 1))
	low=$((high > 20000 ? high - 12000 : 10000))
	while ((${#picked[@]} < 3 * NODES)); do
		p=$((low + (RANDOM * 32768 + RANDOM) % (high - low)))
		if [[ $taken != *" $p "* ]] && ! port_in_use "$p"; then
			picked+=("$p")
			taken+="$p "
		fi
	done
	printf '%s\n' "${picked[@]}"
}

write_configs() {
	local ports i d servers=""
	mapfile -t ports < <(pick_ports)
	for ((i = 1; i <= NODES; i++)); do
		servers+="server.$i=127.0.0.1:${ports[3 * i - 2]}:${ports[3 * i - 1]}"$'\n'
	done
	for ((i = 1; i <= NODES; i++)); do
		d=$(node_dir "$i")
		mkdir -p "$d/data"
		printf '%s\n' "$i" >"$d/data/myid"
		cat >"$d/zoo.cfg.tmp" <<-CFG
			# written by deploy/local-ensemble.sh; node $i of $NODES
			tickTime=$TICK_MS
			initLimit=10
			syncLimit=5
			dataDir=$d/data
			clientPortAddress=127.0.0.1
			clientPort=${ports[3 * i - 3]}
			admin.enableServer=false
			4lw.commands.whitelist=srvr,stat,ruok,mntr,conf,cons,wchs
			maxClientCnxns=0
			autopurge.snapRetainCount=3
			autopurge.purgeInterval=1
		CFG
		printf '%s' "$servers" >>"$d/zoo.cfg.tmp"
		mv "$d/zoo.cfg.tmp" "$d/zoo.cfg"
	done
}

# -- commands ------------------------------------------------------------------------------------

# Wait until every node reports a mode. Returns 0, or 1 (a node died: its id in $DIED), or 2.
wait_serving() {
	local deadline=$((SECONDS + START_TIMEOUT)) i ready
	DIED=""
	while ((SECONDS < deadline)); do
		ready=0
		for ((i = 1; i <= NODES; i++)); do
			if [[ -z $(node_pid "$i") ]]; then
				DIED=$i
				return 1
			fi
			[[ -n $(node_mode "$i") ]] && ready=$((ready + 1))
		done
		((ready == NODES)) && return 0
		sleep 0.2
	done
	return 2
}

cmd_start() {
	command -v "$JAVA" >/dev/null 2>&1 || die "java not found: apt-get install -y zookeeper"
	CP=$(classpath)
	lock
	local attempt fresh=0 i launched rc
	configured || fresh=1
	for attempt in 1 2 3; do
		((fresh)) && write_configs
		launched=()
		for ((i = 1; i <= NODES; i++)); do
			if [[ -z $(node_pid "$i") ]]; then
				launch "$i"
				launched+=("$i")
			fi
		done
		((${#launched[@]})) || say "all $NODES nodes already run"
		rc=0
		wait_serving || rc=$?
		if ((rc == 0)); then
			status_table >&2
			connect_string
			return 0
		fi
		if ((rc == 1)); then
			say "zk$DIED exited; its log ends with:"
			tail -n 15 "$(node_dir "$DIED")/zookeeper.log" >&2 || true
		else
			say "the ensemble did not serve within ${START_TIMEOUT}s"
		fi
		stop_nodes "${launched[@]+"${launched[@]}"}"
		# a port taken between picking and binding: a fresh ensemble picks again
		if ((fresh)) && ((rc == 1)) &&
			grep -qs 'Address already in use' "$(node_dir "$DIED")/zookeeper.log"; then
			say "a port was taken meanwhile: picking new ports (attempt $((attempt + 1)) of 3)"
			continue
		fi
		return 1
	done
	return 1
}

status_table() {
	local i pid mode
	printf 'ensemble %s\n' "$DIR"
	printf '%-5s %-17s %-8s %s\n' node client pid mode
	for ((i = 1; i <= NODES; i++)); do
		pid=$(node_pid "$i")
		mode=down
		[[ -n $pid ]] && mode=$(node_mode "$i") && mode=${mode:-"running, not serving"}
		printf '%-5s %-17s %-8s %s\n' "zk$i" "127.0.0.1:$(client_port "$i")" "${pid:--}" "$mode"
	done
	printf 'connect string: %s\n' "$(connect_string)"
}

cmd_status() {
	configured || {
		say "no ensemble configured in $DIR"
		return 3
	}
	status_table
	local i serving=0 running=0
	for ((i = 1; i <= NODES; i++)); do
		[[ -n $(node_pid "$i") ]] && running=$((running + 1))
		[[ -n $(node_mode "$i") ]] && serving=$((serving + 1))
	done
	((serving == NODES)) && return 0
	((running == 0)) && return 3
	return 1
}

cmd_stop() {
	configured || {
		say "no ensemble configured in $DIR: nothing to stop"
		return 0
	}
	lock
	local i nodes=()
	for ((i = 1; i <= NODES; i++)); do nodes+=("$i"); done
	stop_nodes "${nodes[@]}"
}

cmd_clean() {
	[[ -d $DIR ]] || return 0
	[[ -f $DIR/.autoai-ensemble ]] || die "$DIR was not made by this script: not deleting it"
	cmd_stop
	rm -rf "$DIR"
	say "deleted $DIR"
}

main() {
	(($# >= 1 && $# <= 2)) || usage
	DIR=${2:-${AUTOAI_ENSEMBLE_DIR:-$HOME/.cache/autoai/ensemble}}
	[[ $DIR == /* ]] || DIR="$PWD/$DIR"
	DIR=${DIR%/}
	case $1 in
	start) cmd_start ;;
	stop) cmd_stop ;;
	status) cmd_status ;;
	connect-string)
		configured || die "no ensemble configured in $DIR"
		connect_string
		;;
	clean) cmd_clean ;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
