#!/usr/bin/env bash
# Installs and starts everything the console needs on this machine, idempotently.
#
#   scripts/bootstrap.sh [STEP ...]
#
# Steps (run in the order given; default: all):
#   python       .venv + pip install -r requirements.txt (only when it changed),
#                and .run/secret-key (a random SECRET_KEY, made once and kept)
#   services     postgres + redis
#   postgres     PostgreSQL answering (installs/starts it when local), database created
#   redis        Redis answering (installs/starts it when local)
#   docker       Docker engine answering (installs docker.io, starts dockerd)
#   base-image   rts-base:bookworm (mmdebstrap minbase + python3, docker import)
#   demo-images  rts-demo-model:1.0.0, :2.0.0 and :3.0.0 (for WebSocket) from examples/model-server
#   images       base-image + demo-images (starts the engine first if needed)
#   chromium     /usr/bin/chromium for the browser tests
#   bench-tools  wrk, nginx and rts-fast-model:1.0.0 (nginx with a fixed answer, from
#                examples/fast-model) for bench/gateway.py (not part of all)
#   all          python services docker images
#   test         all chromium   (--with-chromium adds chromium to any list)
#   status       print what is there, change nothing
#
# Environment: DATABASE_HOST DATABASE_PORT DATABASE_USER DATABASE_NAME
# DATABASE_PASSWORD REDIS_URL DOCKER_HOST (same meaning as in console/settings.py).
# A second run finds everything in place and takes a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUN_DIR="$ROOT/.run"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"

DB_HOST="${DATABASE_HOST:-127.0.0.1}"
DB_PORT="${DATABASE_PORT:-5432}"
DB_USER="${DATABASE_USER:-postgres}"
DB_NAME="${DATABASE_NAME:-console}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

BASE_IMAGE="rts-base:bookworm"
DEMO_REPO="rts-demo-model"
DEMO_VERSIONS=(1.0.0 2.0.0 3.0.0)
DEMO_DIR="$ROOT/examples/model-server"
DEMO_LABEL="rts.demo.source-sha256"
FAST_IMAGE="rts-fast-model:1.0.0"
FAST_DIR="$ROOT/examples/fast-model"
FAST_LABEL="rts.fast.source-sha256"
DEFAULT_DOCKER_SOCK="/var/run/docker.sock"
# The local engine's networks (one /24 per service) come from here.
ENGINE_ADDRESS_POOL="10.210.0.0/16"

mkdir -p "$RUN_DIR"

# ---- output helpers ------------------------------------------------------------
say()  { printf '==> %s\n' "$*"; }
ok()   { printf '    %s\n' "$*"; }
die()  { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---- one bootstrap at a time (make run and make test may race) -----------------
# fd 9 holds the lock; every long-lived process we start closes it (9>&-).
if have flock; then
    exec 9>"$RUN_DIR/bootstrap.lock"
    if ! flock -n 9; then
        say "waiting for another bootstrap to finish"
        flock 9
    fi
fi

# ---- apt: update at most once per run, only when something is installed -------
APT_UPDATED=0
apt_install() {
    # apt_install PACKAGE... ; fails with a clear message where there is no apt-get.
    if ! have apt-get; then
        die "missing: $* (this is not a Debian/Ubuntu machine: install the equivalent packages by hand, then run this again)"
    fi
    if [ "$(id -u)" != 0 ]; then
        die "missing: $* (run 'sudo apt-get install -y $*' or run this script as root)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" = 0 ]; then
        say "apt-get update"
        apt-get update -qq >"$RUN_DIR/apt-update.log" 2>&1 || {
            tail -n 20 "$RUN_DIR/apt-update.log" >&2
            die "apt-get update failed (log: $RUN_DIR/apt-update.log)"
        }
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    apt-get install -y -qq "$@" >"$RUN_DIR/apt-install.log" 2>&1 || {
        tail -n 30 "$RUN_DIR/apt-install.log" >&2
        die "apt-get install $* failed (log: $RUN_DIR/apt-install.log)"
    }
}

is_local_host() {
    case "$1" in 127.0.0.1|localhost|::1|"") return 0 ;; *) return 1 ;; esac
}

# ---- python ------------------------------------------------------------------
step_python() {
    if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        say "removing broken virtualenv .venv"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        have python3 || die "missing: python3 (3.11+). On Debian: apt-get install -y python3 python3-venv"
        say "creating virtualenv .venv ($(python3 --version 2>&1))"
        if ! python3 -m venv "$VENV" >"$RUN_DIR/venv.log" 2>&1; then
            rm -rf "$VENV"
            if have apt-get; then
                apt_install python3-venv
                python3 -m venv "$VENV"
            else
                cat "$RUN_DIR/venv.log" >&2
                die "python3 -m venv failed: install your distribution's venv module for python3"
            fi
        fi
    fi
    local want have_sum=""
    want="$( { sha256sum requirements.txt; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
    [ -f "$STAMP" ] && have_sum="$(cat "$STAMP")"
    if [ "$want" = "$have_sum" ]; then
        ok "python: .venv up to date"
        return
    fi
    say "pip install -r requirements.txt"
    rm -f "$STAMP"
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -r requirements.txt \
            >"$RUN_DIR/pip-install.log" 2>&1; then
        grep -v "^WARNING: Location 'file:" "$RUN_DIR/pip-install.log" | tail -n 30 >&2
        die "pip install failed (log: $RUN_DIR/pip-install.log)"
    fi
    echo "$want" >"$STAMP"
    ok "python: requirements installed"
}

# The console's SECRET_KEY when none is set in the environment: made once, kept
# under .run/ (never committed), readable by its owner only.
step_secret_key() {
    local key_file="$RUN_DIR/secret-key"
    [ -s "$key_file" ] && return
    (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$key_file")
    ok "secret key: created .run/secret-key"
}

# ---- postgresql ----------------------------------------------------------------
pg_answers() { pg_isready -q -h "$DB_HOST" -p "$DB_PORT" -t 3 >/dev/null 2>&1; }

pg_clusters() {
    # Prints "VERSION CLUSTER" for every cluster configured under /etc/postgresql.
    local conf rest
    for conf in /etc/postgresql/*/*/postgresql.conf; do
        [ -f "$conf" ] || continue
        rest="${conf#/etc/postgresql/}"
        rest="${rest%/postgresql.conf}"
        echo "${rest%%/*} ${rest#*/}"
    done
}

pg_start_local_clusters() {
    local version cluster started=0
    while read -r version cluster; do
        started=1
        pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" status >/dev/null 2>&1 && continue
        say "starting PostgreSQL $version/$cluster"
        pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start 9>&- \
            >>"$RUN_DIR/postgresql-start.log" 2>&1 || true
    done < <(pg_clusters)
    [ "$started" = 1 ]
}

pg_trust_local() {
    # Only called on a PostgreSQL this script installed: trust local and loopback.
    local hba version cluster
    for hba in /etc/postgresql/*/*/pg_hba.conf; do
        [ -f "$hba" ] || continue
        say "configuring trust auth for local and 127.0.0.1 in $hba"
        sed -i -E \
            -e 's/^(local[[:space:]]+all[[:space:]]+all[[:space:]]+)[a-z0-9-]+/\1trust/' \
            -e 's/^(local[[:space:]]+all[[:space:]]+postgres[[:space:]]+)[a-z0-9-]+/\1trust/' \
            -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+)[a-z0-9-]+#\1trust#' \
            -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+::1/128[[:space:]]+)[a-z0-9-]+#\1trust#' \
            "$hba"
    done
    # The package may have started the cluster already: make it re-read pg_hba.
    while read -r version cluster; do
        pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" reload 9>&- >/dev/null 2>&1 || true
    done < <(pg_clusters)
}

wait_for() {
    # wait_for SECONDS COMMAND... : polls every 0.5 s.
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}

install_postgres() {
    apt_install postgresql
    pg_trust_local
}

step_postgres() {
    if is_local_host "$DB_HOST" && { ! have pg_ctlcluster || [ -z "$(pg_clusters)" ]; } \
            && ! pg_answers; then
        install_postgres
    fi
    if ! have pg_isready || ! have psql; then
        apt_install postgresql-client
    fi
    if ! pg_answers; then
        is_local_host "$DB_HOST" || die "PostgreSQL does not answer on $DB_HOST:$DB_PORT (DATABASE_HOST is not local: start it there)"
        pg_start_local_clusters || die "no PostgreSQL cluster under /etc/postgresql (try: pg_createcluster 15 main)"
        if ! wait_for 30 pg_answers; then
            tail -n 20 "$RUN_DIR/postgresql-start.log" >&2 || true
            die "PostgreSQL does not answer on $DB_HOST:$DB_PORT (log: $RUN_DIR/postgresql-start.log)"
        fi
    fi
    ok "postgresql: answering on $DB_HOST:$DB_PORT"

    export PGPASSWORD="${DATABASE_PASSWORD:-${PGPASSWORD:-}}"
    [ -n "$PGPASSWORD" ] || unset PGPASSWORD
    local exists
    # Read from stdin so psql interpolates :'name' (it does not for -c).
    exists="$(echo "SELECT 1 FROM pg_database WHERE datname = :'name'" | psql -h "$DB_HOST" -p "$DB_PORT" \
        -U "$DB_USER" -d postgres -XtAq -v ON_ERROR_STOP=1 -v name="$DB_NAME" 2>"$RUN_DIR/psql.log")" || {
        cat "$RUN_DIR/psql.log" >&2
        die "cannot connect to PostgreSQL as $DB_USER on $DB_HOST:$DB_PORT (needs trust auth or DATABASE_PASSWORD)"
    }
    if [ "$exists" != 1 ]; then
        say "creating database $DB_NAME (owner $DB_USER)"
        psql -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d postgres -Xq -v ON_ERROR_STOP=1 \
            -c "CREATE DATABASE \"${DB_NAME//\"/}\" OWNER \"${DB_USER//\"/}\""
    fi
    ok "postgresql: database $DB_NAME exists"
}

# ---- redis ---------------------------------------------------------------------
redis_hostport() {
    # redis://[user:pass@]host[:port][/db] -> "host port"
    local rest="${REDIS_URL#*://}"
    rest="${rest##*@}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    local host="${rest%:*}" port="${rest##*:}"
    [ "$host" = "$rest" ] && port=6379
    [ -n "$host" ] || host=127.0.0.1
    echo "$host $port"
}

step_redis() {
    local host port
    read -r host port < <(redis_hostport)
    redis_answers() { [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = PONG ]; }
    if ! have redis-cli || ! have redis-server; then
        if is_local_host "$host"; then
            have redis-server || apt_install redis-server
        else
            have redis-cli || apt_install redis-tools
        fi
    fi
    if ! redis_answers; then
        is_local_host "$host" || die "Redis does not answer on $host:$port (REDIS_URL is not local: start it there)"
        local dir="$RUN_DIR" logfile="$RUN_DIR/redis.log"
        [ -d /var/lib/redis ] && dir=/var/lib/redis
        [ -d /var/log/redis ] && logfile=/var/log/redis/ci.log
        say "starting Redis on 127.0.0.1:$port"
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" \
            --save "" --appendonly no --dir "$dir" --logfile "$logfile" 9>&- >/dev/null
        wait_for 15 redis_answers || {
            tail -n 20 "$logfile" >&2 || true
            die "Redis does not answer on $host:$port (log: $logfile)"
        }
    fi
    ok "redis: answering on $host:$port"
}

step_services() {
    step_postgres
    step_redis
}

# ---- docker engine -------------------------------------------------------------
docker_answers() { docker info >/dev/null 2>&1; }
DOCKERD_PID=""
docker_answers_or_dockerd_died() {
    docker_answers && return 0
    # Stop waiting as soon as the dockerd we started is gone.
    [ -n "$DOCKERD_PID" ] && ! kill -0 "$DOCKERD_PID" 2>/dev/null && ! dockerd_alive
}

# The local engine's dockerd is running. A killed one stays listed until it is
# reaped: only a live one counts. Another engine on this machine (the tests'
# second one) has a socket of its own and does not count.
dockerd_alive() {
    local pid args
    for pid in $(pgrep -x -r R,S,D dockerd 2>/dev/null); do
        args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
        case "$args" in
            *"unix://$DEFAULT_DOCKER_SOCK"*) return 0 ;;
            *--host*|*" -H "*) ;;
            *) return 0 ;;
        esac
    done
    return 1
}

# The model containers' firewall on the local engine's host (see the script).
engine_firewall() {
    if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$DEFAULT_DOCKER_SOCK" ]; then
        ok "firewall: the engine at DOCKER_HOST is remote; run scripts/engine-firewall.sh on its host"
        return
    fi
    if [ "$(id -u)" != 0 ] || ! have iptables; then
        ok "firewall: not root or no iptables here; model containers are not fenced off (scripts/engine-firewall.sh)"
        return
    fi
    "$ROOT/scripts/engine-firewall.sh" >/dev/null
    # The engine's address pool stays on this machine: should a service's bridge
    # (and with it its more specific route) go away, traffic for its addresses
    # is refused here instead of following the default route off the machine.
    ip route replace unreachable "$ENGINE_ADDRESS_POOL" metric 1000 2>/dev/null || true
    ok "firewall: model container rules in place"
}

step_docker() {
    if docker_answers; then
        ok "docker: engine answering ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        engine_firewall
        return
    fi
    if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$DEFAULT_DOCKER_SOCK" ]; then
        die "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer (start it there, or unset DOCKER_HOST)"
    fi
    if ! have dockerd; then
        apt_install docker.io
    fi
    have docker || die "missing: the docker client (apt-get install -y docker.io)"
    if dockerd_alive; then
        say "waiting for the running Docker engine"
    else
        say "starting Docker engine (log: .run/dockerd.log)"
        # Own session, no stdin, fd 9 closed: Ctrl-C of `make run` does not reach it
        # and it does not hold the bootstrap lock.
        # Every service gets a network of its own: room for 256 of them (the
        # default pools hold about 30).
        nohup setsid dockerd --host "unix://$DEFAULT_DOCKER_SOCK" \
            --default-address-pool "base=$ENGINE_ADDRESS_POOL,size=24" \
            --live-restore --userland-proxy=false \
            </dev/null >>"$RUN_DIR/dockerd.log" 2>&1 9>&- &
        DOCKERD_PID=$!
        disown || true
    fi
    if ! wait_for 60 docker_answers_or_dockerd_died || ! docker_answers; then
        echo "---- tail of $RUN_DIR/dockerd.log ----" >&2
        tail -n 30 "$RUN_DIR/dockerd.log" >&2 || true
        if docker_answers_or_dockerd_died; then
            die "dockerd exited before the engine answered"
        fi
        die "the Docker engine did not answer within 60 s"
    fi
    ok "docker: engine answering ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    engine_firewall
}

# ---- images --------------------------------------------------------------------
step_base_image() {
    docker_answers || step_docker
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        ok "image $BASE_IMAGE present"
        return
    fi
    have mmdebstrap || apt_install mmdebstrap
    local tmp
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/rts-base.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    say "building $BASE_IMAGE with mmdebstrap (about 35 s; log: .run/mmdebstrap.log)"
    if ! mmdebstrap --variant=minbase --include=python3 bookworm "$tmp/rootfs.tar" \
            >"$RUN_DIR/mmdebstrap.log" 2>&1; then
        tail -n 30 "$RUN_DIR/mmdebstrap.log" >&2
        die "mmdebstrap failed (log: $RUN_DIR/mmdebstrap.log)"
    fi
    say "docker import $BASE_IMAGE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
    ok "image $BASE_IMAGE built"
}

source_sha() {  # source_sha DIR
    # Hash of the build context's files (names + contents) and of the base image id,
    # so an edit of the server or a new base image triggers a rebuild.
    {
        (cd "$1" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum)
        docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
    } | sha256sum | cut -d' ' -f1
}

# build_if_outdated IMAGE DIR LABEL SHA [docker build args...]: builds IMAGE from DIR
# unless it already carries LABEL=SHA; returns 1 (build log on stderr) when the build failed.
build_if_outdated() {
    local image=$1 dir=$2 label=$3 sha=$4 current
    shift 4
    current="$(docker image inspect -f "{{ index .Config.Labels \"$label\" }}" "$image" 2>/dev/null || true)"
    if [ "$current" = "$sha" ]; then
        ok "image $image up to date"
        return 0
    fi
    say "docker build $image"
    if ! DOCKER_BUILDKIT=0 docker build -q "$@" --label "$label=$sha" \
            -t "$image" "$dir" >"$RUN_DIR/docker-build.log" 2>&1; then
        cat "$RUN_DIR/docker-build.log" >&2
        return 1
    fi
    ok "image $image built"
    # Drop the untagged leftovers of earlier builds.
    docker image prune -f --filter "label=$label" >/dev/null 2>&1 || true
}

step_demo_images() {
    docker_answers || step_docker
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || step_base_image
    [ -f "$DEMO_DIR/Dockerfile" ] || die "missing $DEMO_DIR/Dockerfile"
    local sha version
    sha="$(source_sha "$DEMO_DIR")"
    for version in "${DEMO_VERSIONS[@]}"; do
        build_if_outdated "$DEMO_REPO:$version" "$DEMO_DIR" "$DEMO_LABEL" "$sha" \
            --build-arg "MODEL_VERSION=$version" || die "docker build of $DEMO_REPO:$version failed"
    done
}

step_fast_image() {
    docker_answers || step_docker
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || step_base_image
    [ -f "$FAST_DIR/Dockerfile" ] || die "missing $FAST_DIR/Dockerfile"
    # Only bench/gateway.py needs it, and its build installs nginx from Debian's
    # archive: a failed download must not stop the console or its tests.
    if ! build_if_outdated "$FAST_IMAGE" "$FAST_DIR" "$FAST_LABEL" "$(source_sha "$FAST_DIR")"; then
        printf 'bootstrap: warning: docker build of %s failed; only bench/gateway.py needs it\n' \
            "$FAST_IMAGE" >&2
    fi
}

step_images() {
    step_base_image
    step_demo_images
}

# ---- chromium ------------------------------------------------------------------
step_chromium() {
    if [ -x /usr/bin/chromium ]; then
        ok "chromium: /usr/bin/chromium present"
        return
    fi
    apt_install chromium
    [ -x /usr/bin/chromium ] || die "chromium installed but /usr/bin/chromium is missing"
    ok "chromium: installed"
}

# ---- benchmark tools -------------------------------------------------------------
step_bench_tools() {
    local missing=()
    have wrk || missing+=(wrk)
    have nginx || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    ok "bench tools: wrk and nginx present"
    step_fast_image
}

# ---- status --------------------------------------------------------------------
step_status() {
    local host port
    read -r host port < <(redis_hostport)
    printf '%-12s %s\n' python "$([ -f "$STAMP" ] && echo "ok (.venv)" || echo missing)"
    printf '%-12s %s\n' postgresql "$(pg_answers && echo "ok ($DB_HOST:$DB_PORT)" || echo "not answering")"
    printf '%-12s %s\n' redis "$([ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = PONG ] && echo "ok ($host:$port)" || echo "not answering")"
    printf '%-12s %s\n' docker "$(docker_answers && echo ok || echo "not answering")"
    local image
    for image in "$BASE_IMAGE" "${DEMO_VERSIONS[@]/#/$DEMO_REPO:}"; do
        printf '%-12s %s\n' image "$image: $(docker image inspect "$image" >/dev/null 2>&1 && echo present || echo missing)"
    done
    printf '%-12s %s\n' chromium "$([ -x /usr/bin/chromium ] && echo present || echo missing)"
}

usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }

# ---- main ----------------------------------------------------------------------
[ "$#" -gt 0 ] || set -- all
steps=()
for arg in "$@"; do
    case "$arg" in
        all) steps+=(python services docker images) ;;
        test) steps+=(python services docker images chromium) ;;
        --with-chromium) steps+=(chromium) ;;
        python|services|postgres|redis|docker|base-image|demo-images|images|chromium|bench-tools|status) steps+=("$arg") ;;
        -h|--help|help) usage; exit 0 ;;
        *) usage >&2; die "unknown step: $arg" ;;
    esac
done

started=$SECONDS
for step in "${steps[@]}"; do
    "step_${step//-/_}"
    if [ "$step" = python ]; then step_secret_key; fi
done
[ "${steps[*]}" = status ] || say "bootstrap done in $((SECONDS - started)) s"
