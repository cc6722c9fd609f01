#!/usr/bin/env bash
# Blue/green release of the imgclf service on one host, with automatic rollback.
#
#   deploy/release.sh [--deploy-id ID] IMAGE_REF
#       start IMAGE_REF on the idle colour, wait until its health check answers 200, point nginx
#       at it, stop the old colour. ID (letters, digits, . _ -) names the deploy that asked for
#       it, and is recorded with the switch.
#   deploy/release.sh --rollback [--deploy-id ID]
#       the same release procedure with the previous release's image. With --deploy-id, only if
#       the release nginx serves is the one deploy ID made; otherwise nothing changes (exit 0).
#       So a deploy can send its rollback to every host: the host's own record decides, also on
#       a host whose deploy command timed out or was killed after the switch.
#   deploy/release.sh --status
#       what nginx serves (key=value lines): active colour, current and previous image, deploy
#
# A release that crashes or does not answer 200 within IMGCLF_HEALTH_TIMEOUT is stopped and
# removed; the old colour keeps serving, the nginx upstream file is not touched, and the script
# prints why (with the tail of the new release's log) and exits 1. A failed proxy reload puts the
# old upstream file back. After --rollback, `previous` is the image rolled back from, so a second
# --rollback undoes the first. The live colour is read from the upstream file (the state file
# only where that file names neither port), so a release killed half-way never stops the live one.
# Each colour's record (image, rollback target, deploy id) is written before nginx is switched to
# it, so wherever a release is killed, the live colour's record says what the host serves.
#
# Configuration: environment variables, or KEY=VALUE lines in /etc/imgclf/release.env (path:
# $IMGCLF_RELEASE_ENV); the environment wins over the file. The file is parsed, never executed.
#   IMGCLF_RUNTIME          docker (default) | process (IMAGE_REF is a command line run with PORT
#                           in its environment; for tests and hosts without containers)
#   IMGCLF_STATE_DIR        /var/lib/imgclf: active colour, each colour's record, history,
#                           lock, and (process runtime) pid files and logs
#   IMGCLF_BLUE_PORT        3001            IMGCLF_GREEN_PORT   3002     (host ports, 127.0.0.1)
#   IMGCLF_HEALTH_PATH      /readyz         IMGCLF_HEALTH_TIMEOUT 180 s  IMGCLF_HEALTH_INTERVAL 1 s
#   IMGCLF_UPSTREAM_FILE    /etc/nginx/imgclf-upstream.conf  (`server 127.0.0.1:PORT;`)
#   IMGCLF_RELOAD_CMD       nginx -s reload
#   IMGCLF_DRAIN_SECONDS    10: wait after the reload before stopping the old colour (in-flight
#                           requests on old nginx workers finish against it)
#   IMGCLF_STOP_TIMEOUT     30 s of SIGTERM grace (the service flushes its prediction log)
#   IMGCLF_LOCK_TIMEOUT     0: a second release fails at once (exit 75); N: wait up to N s
#   docker only:
#   IMGCLF_SERVICE_ENV_FILE /etc/imgclf/service.env (`docker run --env-file`: JWT secret,
#                           MLFLOW_TRACKING_URI, IMGCLF_PREDICTION_DB_URL, ...)
#   IMGCLF_CONTAINER_PORT   3000            IMGCLF_DOCKER_ARGS  extra `docker run` arguments
#   IMGCLF_ECR_LOGIN        auto: `aws ecr get-login-password | docker login` for ECR images
#                           (instance role); never: the host is logged in already
#
# Exit status: 0 released; 1 release failed (the old colour still serves); 2 usage or
# configuration error; 75 another release holds the lock.
set -euo pipefail

readonly CONFIG_VARS=(
  IMGCLF_RUNTIME IMGCLF_STATE_DIR IMGCLF_BLUE_PORT IMGCLF_GREEN_PORT IMGCLF_HEALTH_PATH
  IMGCLF_HEALTH_TIMEOUT IMGCLF_HEALTH_INTERVAL IMGCLF_UPSTREAM_FILE IMGCLF_RELOAD_CMD
  IMGCLF_DRAIN_SECONDS IMGCLF_STOP_TIMEOUT IMGCLF_LOCK_TIMEOUT IMGCLF_SERVICE_ENV_FILE
  IMGCLF_CONTAINER_PORT IMGCLF_DOCKER_ARGS IMGCLF_ECR_LOGIN IMGCLF_LOG_LINES
)
FAIL_REASON=""

log() { printf '%s release: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
warn() { log "WARNING: $*" >&2; }
die() {
  local status=$1
  shift
  log "ERROR: $*" >&2
  exit "$status"
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# --- configuration -----------------------------------------------------------------------------

# KEY=VALUE lines of the env file for known keys only (optional quotes); never `source`d, so the
# file cannot run code. Values already in the environment are kept.
load_env_file() {
  local file=$1 line key value
  [[ -f $file ]] || return 0
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Z_][A-Z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[2]}
    value=${BASH_REMATCH[3]}
    [[ " ${CONFIG_VARS[*]} " == *" $key "* ]] || continue
    [[ -z ${!key+set} ]] || continue
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
      value=${BASH_REMATCH[1]}
    fi
    printf -v "$key" '%s' "$value"
  done <"$file"
}

load_config() {
  load_env_file "${IMGCLF_RELEASE_ENV:-/etc/imgclf/release.env}"
  RUNTIME=${IMGCLF_RUNTIME:-docker}
  STATE_DIR=${IMGCLF_STATE_DIR:-/var/lib/imgclf}
  BLUE_PORT=${IMGCLF_BLUE_PORT:-3001}
  GREEN_PORT=${IMGCLF_GREEN_PORT:-3002}
  HEALTH_PATH=${IMGCLF_HEALTH_PATH:-/readyz}
  HEALTH_TIMEOUT=${IMGCLF_HEALTH_TIMEOUT:-180}
  HEALTH_INTERVAL=${IMGCLF_HEALTH_INTERVAL:-1}
  UPSTREAM_FILE=${IMGCLF_UPSTREAM_FILE:-/etc/nginx/imgclf-upstream.conf}
  RELOAD_CMD=${IMGCLF_RELOAD_CMD:-nginx -s reload}
  DRAIN_SECONDS=${IMGCLF_DRAIN_SECONDS:-10}
  STOP_TIMEOUT=${IMGCLF_STOP_TIMEOUT:-30}
  LOCK_TIMEOUT=${IMGCLF_LOCK_TIMEOUT:-0}
  SERVICE_ENV_FILE=${IMGCLF_SERVICE_ENV_FILE:-/etc/imgclf/service.env}
  CONTAINER_PORT=${IMGCLF_CONTAINER_PORT:-3000}
  DOCKER_ARGS=${IMGCLF_DOCKER_ARGS:-}
  ECR_LOGIN=${IMGCLF_ECR_LOGIN:-auto}
  LOG_LINES=${IMGCLF_LOG_LINES:-40}
  [[ $RUNTIME == docker || $RUNTIME == process ]] ||
    die 2 "IMGCLF_RUNTIME must be docker or process, got '$RUNTIME'"
  local name
  for name in BLUE_PORT GREEN_PORT HEALTH_TIMEOUT DRAIN_SECONDS STOP_TIMEOUT LOCK_TIMEOUT; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die 2 "IMGCLF_$name must be a whole number, got '${!name}'"
  done
  [[ $BLUE_PORT != "$GREEN_PORT" ]] || die 2 "blue and green need different ports"
}

# --- state: one small file per key, replaced atomically ----------------------------------------

read_state() { cat "$STATE_DIR/$1" 2>/dev/null || true; }

write_state() {
  local tmp
  tmp=$(mktemp "$STATE_DIR/.$1.XXXXXX")
  printf '%s\n' "$2" >"$tmp"
  mv -f "$tmp" "$STATE_DIR/$1"
}

# time, action, colour, result, image, deploy
record_history() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$3" "$4" "$5" \
    >>"$STATE_DIR/history.tsv"
}

# What a colour serves, what a rollback from it returns to, and the deploy that made it. Written
# before nginx is switched to the colour: a release killed right after the switch (an SSM
# command that timed out) still leaves the truth on record.
record_colour() {
  write_state "$1.image" "$2"
  write_state "$1.previous" "$3"
  write_state "$1.deploy" "$4"
}

# The colour nginx is really sending traffic to: the upstream file's port wins over the state
# file, which a release killed between the switch and the state update leaves stale.
live_colour() {
  local recorded port
  recorded=$(read_state active)
  port=$(sed -n 's/^[[:space:]]*server[[:space:]]*127\.0\.0\.1:\([0-9]*\);.*/\1/p' \
    "$UPSTREAM_FILE" 2>/dev/null | head -n 1)
  case $port in
    "$BLUE_PORT") echo blue ;;
    "$GREEN_PORT") echo green ;;
    *) echo "$recorded" ;;
  esac
}

# A key of the live colour's record ("" before the first release).
live_record() {
  local colour
  colour=$(live_colour)
  [[ -z $colour ]] || read_state "$colour.$1"
}

# The image a rollback returns to (`previous`: hosts last released before per-colour records).
rollback_target() {
  local target
  target=$(live_record previous)
  echo "${target:-$(read_state previous)}"
}

other_colour() { if [[ $1 == blue ]]; then echo green; else echo blue; fi; }
port_of() { if [[ $1 == blue ]]; then echo "$BLUE_PORT"; else echo "$GREEN_PORT"; fi; }

# Only one release at a time: fd 9 holds the lock until the script exits. Started services must
# not inherit it (process_start closes it), or they would hold it for their whole life.
acquire_lock() {
  local lock="$STATE_DIR/release.lock" waited=(-n)
  ((LOCK_TIMEOUT == 0)) || waited=(-w "$LOCK_TIMEOUT")
  exec 9>>"$lock"
  if ! flock "${waited[@]}" 9; then
    die 75 "another release is in progress ($(cat "$lock.owner" 2>/dev/null || echo unknown));" \
      "nothing changed"
  fi
  printf 'pid %s since %s: %s\n' "$$" "$(date -u +%H:%M:%SZ)" "$*" >"$lock.owner"
}

# --- runtime: process (a command line in its own process group) --------------------------------

# Field 22 of /proc/PID/stat (start time): a recycled pid has a different one.
proc_start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  awk '{ print $20 }' <<<"$stat"
}

# Alive and not a zombie (a zombie still answers kill -0).
proc_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

process_start() {
  local colour=$1 command=$2 port=$3 pidfile="$STATE_DIR/$1.pid" i pid
  rm -f "$pidfile.new"
  # setsid: a session and process group of its own, so stop can signal the whole tree, and
  # the service outlives this script. The child writes its own pid before exec'ing the command.
  # shellcheck disable=SC2016  # $$, $0 and $1 are the child shell's, expanded there
  PORT=$port setsid bash -c 'echo "$$" >"$0"; eval "exec $1"' "$pidfile.new" "$command" \
    </dev/null >"$STATE_DIR/$colour.log" 2>&1 9>&- &
  for ((i = 0; i < 50; i++)); do
    [[ -s $pidfile.new ]] && break
    sleep 0.1
  done
  pid=$(cat "$pidfile.new" 2>/dev/null) || {
    FAIL_REASON="the command did not start"
    return 1
  }
  printf '%s %s\n' "$pid" "$(proc_start_time "$pid" || echo gone)" >"$pidfile"
  rm -f "$pidfile.new"
}

# The recorded pid, if it is still the process we started.
process_pid() {
  local pid started
  [[ -f $STATE_DIR/$1.pid ]] || return 1
  read -r pid started <"$STATE_DIR/$1.pid" || return 1
  [[ $(proc_start_time "$pid" 2>/dev/null) == "$started" ]] && proc_alive "$pid" && echo "$pid"
}

process_running() { process_pid "$1" >/dev/null; }

process_stop() {
  local colour=$1 pid i
  if pid=$(process_pid "$colour"); then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      proc_alive "$pid" || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true # stragglers of the group too
  fi
  rm -f "$STATE_DIR/$colour.pid"
}

process_logs() { tail -n "$LOG_LINES" "$STATE_DIR/$1.log" 2>/dev/null || true; }

# --- runtime: docker ------------------------------------------------------------------------------

container() { echo "imgclf-$1"; }

ecr_login() {
  local registry=${1%%/*}
  [[ $ECR_LOGIN != never && $registry =~ ^[0-9]+\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com$ ]] ||
    return 0
  command -v aws >/dev/null || {
    warn "aws CLI missing: skipping the ECR login"
    return 0
  }
  aws ecr get-login-password --region "${BASH_REMATCH[1]}" |
    docker login --username AWS --password-stdin "$registry" >/dev/null
}

docker_start() {
  local colour=$1 image=$2 port=$3 extra=() args
  ecr_login "$image" || {
    FAIL_REASON="ECR login failed"
    return 1
  }
  # A rollback may name an image the registry has since expired: the local copy will do.
  docker pull -q "$image" >/dev/null || docker image inspect "$image" >/dev/null 2>&1 || {
    FAIL_REASON="docker pull $image failed (and no local copy)"
    return 1
  }
  args=(run -d --name "$(container "$colour")" --restart unless-stopped
    -p "127.0.0.1:$port:$CONTAINER_PORT" --label "imgclf.colour=$colour")
  if [[ -f $SERVICE_ENV_FILE ]]; then
    args+=(--env-file "$SERVICE_ENV_FILE")
  else
    warn "$SERVICE_ENV_FILE missing: the container gets no service environment"
  fi
  read -r -a extra <<<"$DOCKER_ARGS" # split on blanks; no quoting inside
  args+=(${extra[@]+"${extra[@]}"} "$image") # (bash 4.2 calls an empty array unbound)
  docker "${args[@]}" >/dev/null || {
    FAIL_REASON="docker run failed"
    return 1
  }
}

# Running and never restarted: with --restart a crash loop would otherwise look alive.
docker_running() {
  [[ $(docker inspect -f '{{.State.Status}} {{.RestartCount}}' "$(container "$1")" 2>/dev/null) \
    == "running 0" ]]
}

docker_stop() {
  docker stop -t "$STOP_TIMEOUT" "$(container "$1")" >/dev/null 2>&1 || true
  docker rm -f "$(container "$1")" >/dev/null 2>&1 || true
}

docker_logs() { docker logs --tail "$LOG_LINES" "$(container "$1")" 2>&1 || true; }

# --- the release procedure -------------------------------------------------------------------------

start_colour() { "${RUNTIME}_start" "$@"; }
colour_running() { "${RUNTIME}_running" "$1"; }
stop_colour() { "${RUNTIME}_stop" "$1"; }
colour_logs() { "${RUNTIME}_logs" "$1"; }

# Something not started by us on the idle port would pass the health check in the new release's
# place, so refuse to go on.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

now_ms() { date +%s%3N; } # GNU date; $SECONDS is whole seconds, $EPOCHREALTIME needs bash 5

wait_healthy() {
  local colour=$1 url="http://127.0.0.1:$2$HEALTH_PATH" deadline code=none
  deadline=$(($(now_ms) + HEALTH_TIMEOUT * 1000))
  while true; do
    if ! colour_running "$colour"; then
      FAIL_REASON="the new release exited before answering 200 on $url"
      return 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
    [[ $code == 200 ]] && return 0
    if (($(now_ms) >= deadline)); then
      FAIL_REASON="$url did not answer 200 within ${HEALTH_TIMEOUT}s (last status: $code)"
      return 1
    fi
    sleep "$HEALTH_INTERVAL"
  done
}

# Replace the upstream file by rename (nginx never reads half a file), then reload; if the
# reload fails, the old file goes back and the proxy is reloaded on it.
# (Called after `||`, where set -e is off: every step checks its own status.)
switch_upstream() {
  local port=$1 colour=$2 image=$3 tmp backup=""
  FAIL_REASON="cannot write $UPSTREAM_FILE"
  if [[ -f $UPSTREAM_FILE ]]; then
    backup=$(mktemp "$UPSTREAM_FILE.bak.XXXXXX") || return 1
    cp -p "$UPSTREAM_FILE" "$backup" || return 1
  fi
  tmp=$(mktemp "$UPSTREAM_FILE.new.XXXXXX") || return 1
  if ! {
    printf '# written by deploy/release.sh at %s: %s, %s\nserver 127.0.0.1:%s;\n' \
      "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$colour" "${image//$'\n'/ }" "$port" >"$tmp" &&
      chmod 0644 "$tmp" && mv -f "$tmp" "$UPSTREAM_FILE"
  }; then
    rm -f "$tmp" "$backup"
    return 1
  fi
  if bash -c "$RELOAD_CMD" 9>&-; then
    rm -f "$backup"
    return 0
  fi
  FAIL_REASON="the proxy reload ($RELOAD_CMD) failed; the old upstream file is back"
  if [[ -n $backup ]]; then mv -f "$backup" "$UPSTREAM_FILE"; else rm -f "$UPSTREAM_FILE"; fi
  bash -c "$RELOAD_CMD" 9>&- || warn "reloading the proxy on the old upstream failed too"
  return 1
}

fail_release() {
  local action=$1 colour=$2 image=$3 active=$4 deploy_id=$5
  # The reason first: SSM keeps only the first ~2,500 characters of a command's output.
  log "ERROR: $action of '$image' failed: $FAIL_REASON" >&2
  log "new release ($colour) log, last $LOG_LINES lines:" >&2
  colour_logs "$colour" | sed 's/^/    /' >&2
  stop_colour "$colour"
  record_history "$action" "$colour" "failed: $FAIL_REASON" "$image" "$deploy_id"
  die 1 "$action of '$image' failed: $FAIL_REASON." \
    "${active:-nothing} still serving, upstream file unchanged."
}

# deploy_id: recorded with the switch (empty for a rollback, so that a rollback asked for twice
# does not undo itself).
release() {
  local image=$1 action=$2 deploy_id=$3 active idle port current replaced
  active=$(live_colour)
  [[ $active == "$(read_state active)" || -z $(read_state active) ]] ||
    warn "the upstream file serves '$active', the state says '$(read_state active)': trusting nginx"
  current=$(live_record image)
  # Re-releasing the serving image must not make it its own rollback target.
  replaced=$current
  [[ -n $current && $current != "$image" ]] || replaced=$(rollback_target)
  idle=$(other_colour "$active")
  port=$(port_of "$idle")
  local failed=(fail_release "$action" "$idle" "$image" "$active" "$deploy_id")
  log "$action: '$image' on $idle (127.0.0.1:$port); active: ${active:-none}"
  [[ -d $(dirname "$UPSTREAM_FILE") ]] || die 2 "no folder for IMGCLF_UPSTREAM_FILE=$UPSTREAM_FILE"
  stop_colour "$idle" # leftovers of an interrupted earlier release
  port_free "$port" || die 1 "port $port is in use by something this script did not start"

  start_colour "$idle" "$image" "$port" || "${failed[@]}"
  wait_healthy "$idle" "$port" || "${failed[@]}"
  log "$idle answers 200 on $HEALTH_PATH; switching the upstream to port $port"
  record_colour "$idle" "$image" "$replaced" "$deploy_id"
  switch_upstream "$port" "$idle" "$image" || "${failed[@]}"

  write_state active "$idle"
  record_history "$action" "$idle" ok "$image" "$deploy_id"
  if [[ -n $active ]]; then
    log "draining $active for ${DRAIN_SECONDS}s, then stopping it"
    sleep "$DRAIN_SECONDS"
    stop_colour "$active"
  fi
  log "$action done: $idle serves '$image' (previous: '${replaced:-none}')"
}

# With a deploy id: only when the live release is that deploy's.
rollback() {
  local deploy_id=$1 made_by previous
  made_by=$(live_record deploy)
  if [[ -n $deploy_id && $made_by != "$deploy_id" ]]; then
    log "nothing to roll back: deploy $deploy_id did not make the live release" \
      "($(live_colour): '$(live_record image)', deploy '${made_by:-none}')"
    return 0
  fi
  previous=$(rollback_target)
  [[ -n $previous ]] || die 1 "no previous release recorded in $STATE_DIR: nothing to roll back to"
  release "$previous" rollback ""
}

show_status() {
  printf 'active=%s\ncurrent=%s\nprevious=%s\ndeploy=%s\n' "$(live_colour)" \
    "$(live_record image)" "$(rollback_target)" "$(live_record deploy)"
}

usage_error() {
  usage >&2
  exit 2
}

main() {
  load_config
  local action="" image="" deploy_id=""
  while (($#)); do
    case $1 in
      -h | --help)
        usage
        return
        ;;
      --status | --rollback)
        [[ -z $action ]] || usage_error
        action=${1#--}
        ;;
      --deploy-id)
        [[ ${2-} =~ ^[A-Za-z0-9._-]+$ ]] ||
          die 2 "--deploy-id takes letters, digits, '.', '_' and '-', got '${2-}'"
        deploy_id=$2
        shift
        ;;
      -*) usage_error ;;
      *)
        [[ -z $action ]] || usage_error
        action=release image=$1
        ;;
    esac
    shift
  done
  case $action in
    status)
      [[ -z $deploy_id ]] || usage_error
      show_status
      ;;
    rollback)
      mkdir -p "$STATE_DIR"
      acquire_lock "rollback${deploy_id:+ of deploy $deploy_id}"
      rollback "$deploy_id"
      ;;
    release)
      mkdir -p "$STATE_DIR"
      acquire_lock "release $image${deploy_id:+ (deploy $deploy_id)}"
      release "$image" release "$deploy_id"
      ;;
    *) usage_error ;;
  esac
}

main "$@"
