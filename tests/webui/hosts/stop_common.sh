# Body of <host>/stop.sh [PORT]: stops only the PID start.sh recorded for that port, then what is
# left of the process group setsid gave it.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
set +e
host_paths
PORT=${1:-${PORT:-7870}}
PIDFILE=$ROOT/logs/webui-$PORT.pid
[[ -f $PIDFILE ]] || { say "nothing recorded for port $PORT"; exit 0; }
pid=$(cat "$PIDFILE")
if ! kill -0 "$pid" 2>/dev/null; then say "PID $pid already gone"; rm -f "$PIDFILE"; exit 0; fi
grep -qa "launch.py" "/proc/$pid/cmdline" || { say "PID $pid is no longer our launch.py: left alone"; rm -f "$PIDFILE"; exit 1; }
kill -TERM "$pid"
for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$pid" 2>/dev/null && { say "SIGKILL $pid"; kill -KILL "$pid"; }
rest=$(ps -o pid= -g "$pid" 2>/dev/null | xargs)
[[ -n $rest ]] && { say "group leftovers: $rest"; kill -KILL -- "-$pid"; }
rm -f "$PIDFILE"; say "stopped $pid"
