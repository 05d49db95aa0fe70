# Body of <host>/start.sh (sourced after HOST_NAME and HOST_ARGS are set).  Starts the fork in the
# background on CPU, bound to 127.0.0.1, with the REST API, each EXTENSION_DIR argument symlinked
# into <data-dir>/extensions (default: the project checkout, i.e. PG itself); waits for the API and
# prints the PID.  Knobs: PORT (default 7870), DATA_DIR ($FORK_HARNESS/<host>/data-$PORT),
# CKPT (rand_sd15.safetensors), NOWEBUI=1, WAIT_MODEL=1, START_TIMEOUT=900, OMP_NUM_THREADS=1,
# EXTRA_ARGS, HF_OVERLAY (a dir of config files laid over the tree's backend/huggingface/, see common.sh).  Log and pid: $FORK_HARNESS/<host>/logs/webui-$PORT.{log,pid}.  Stop with stop.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
host_paths
PORT=${PORT:-7870}
LOG=$ROOT/logs/webui-$PORT.log
PIDFILE=$ROOT/logs/webui-$PORT.pid
[[ -x $PY && -f $WEBUI/launch.py ]] || fail "not set up: run $HOST_NAME/setup.sh first"
[[ -n ${HF_OVERLAY:-} ]] && overlay_tree "$HF_OVERLAY"   # the harness's own model config files (common.sh)
mkdir -p "$ROOT/logs"
if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then fail "already running as PID $(cat "$PIDFILE")"; fi
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && fail "127.0.0.1:$PORT is taken"

avail=$(awk '/MemAvailable/ {print int($2/1048576)}' /proc/meminfo)
(( avail >= ${MIN_FREE_GB:-11} )) || fail "only ${avail} GiB available (need ${MIN_FREE_GB:-11}; a WebUI takes ~10 GB): wait"

DATA_DIR=$(realpath -m "${DATA_DIR:-$ROOT/data-$PORT}")
mkdir -p "$DATA_DIR/extensions"
for d in "$DATA_DIR"/extensions/*; do [[ -L $d ]] && rm -f "$d"; done   # only links we made
(( $# )) || set -- "$(realpath "$HOSTS_DIR/../../..")"
for e in "$@"; do
  e=$(realpath "$e"); ln -sfn "$e" "$DATA_DIR/extensions/$(basename "$e")"; say "extension: $e"
done

args=(--skip-prepare-environment --skip-install --skip-python-version-check --skip-version-check
      --skip-torch-cuda-test --api --server-name 127.0.0.1 --port "$PORT" --data-dir "$DATA_DIR"
      --enable-insecure-extension-access --no-prompt-history)
# where the models are and which checkpoint to load: A1111's flags, unless the host's start.sh defines
# `host_model_args` (it may read PORT, DATA_DIR, WEBUI, CKPT and must set model_args)
if declare -F host_model_args > /dev/null; then
  host_model_args
else
  model_args=(--ckpt "$WEBUI/models/Stable-diffusion/${CKPT:-rand_sd15.safetensors}" --models-dir "$WEBUI/models"
              --no-download-sd-model --do-not-download-clip)
fi
args+=("${model_args[@]}" "${HOST_ARGS[@]}")
[[ ${NOWEBUI:-0} == 1 ]] && args+=(--nowebui)
# shellcheck disable=SC2206
args+=(${EXTRA_ARGS:-})

export HF_HOME=$A1111_HARNESS/hf HF_HUB_CACHE=$A1111_HARNESS/hf/hub   # CLIP-L tokenizer/config, no weights
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False COMMANDLINE_ARGS=
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONDONTWRITEBYTECODE=1 no_proxy=127.0.0.1,localhost
cd "$WEBUI"
say "launch.py ${args[*]}"
setsid "$PY" launch.py "${args[@]}" > "$LOG" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$PIDFILE"
t0=$(date +%s)
until curl -sf --noproxy '*' "http://127.0.0.1:$PORT/sdapi/v1/sd-models" > /dev/null; do
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; rm -f "$PIDFILE"; fail "exited during start (log: $LOG)"; }
  (( $(date +%s) - t0 < ${START_TIMEOUT:-900} )) || fail "no API after ${START_TIMEOUT:-900}s (log: $LOG; still running as $pid)"
  sleep 2
done
# the Lora extension adds its API routes when the app has started (Forge answered sd-models before /sdapi/v1/loras)
until curl -sf --noproxy '*' "http://127.0.0.1:$PORT/sdapi/v1/loras" > /dev/null; do
  kill -0 "$pid" 2>/dev/null || fail "exited during start (log: $LOG)"
  (( $(date +%s) - t0 < ${START_TIMEOUT:-900} )) || fail "no /sdapi/v1/loras after ${START_TIMEOUT:-900}s (log: $LOG)"
  sleep 2
done
if [[ ${WAIT_MODEL:-1} == 1 ]]; then
  until grep -Eq "Model (\S+ \[\w+\] )?loaded in" "$LOG"; do   # A1111/Forge: "Model loaded in"; reForge: "Model NAME [hash] loaded in"
    kill -0 "$pid" 2>/dev/null || fail "exited while loading the model (log: $LOG)"
    (( $(date +%s) - t0 < ${START_TIMEOUT:-900} )) || fail "model not loaded after ${START_TIMEOUT:-900}s (log: $LOG)"
    sleep 2
  done
fi
say "up after $(( $(date +%s) - t0 ))s: http://127.0.0.1:$PORT"
echo "$pid"
