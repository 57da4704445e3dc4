# Sourced by .ci/run (bash, `set -euo pipefail` active): give the image tests a Docker engine.
#
# Installs docker.io and debootstrap when missing, starts one dockerd whose state lives under
# $SIDECAR_DOCKER_DIR (default /tmp/apisix-sidecar-dockerd; kept between runs so the stand-in base
# image stays cached by its tag), waits until it answers, exports DOCKER_HOST and the testcontainers
# settings this machine needs, and stops the daemon when the calling shell exits.
# Idempotent: a daemon already answering on that socket is reused (and left running).
# When no engine can be had it prints one line and returns 0; the image tests then skip.

_sidecar_docker_main() {
    local dir="${SIDECAR_DOCKER_DIR:-/tmp/apisix-sidecar-dockerd}"
    local sock="$dir/docker.sock"
    local i

    export TESTCONTAINERS_RYUK_DISABLED=true
    export TESTCONTAINERS_CONNECTION_MODE=docker_host

    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
        if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                   docker.io debootstrap >/dev/null 2>&1 \
               || { apt-get update -qq >/dev/null 2>&1 \
                    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                       --no-install-recommends docker.io debootstrap >/dev/null 2>&1; }; }; then
            echo "docker: cannot install docker.io/debootstrap; image tests will skip"
            return 0
        fi
    fi

    if [ -S "$sock" ] && DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; then
        export DOCKER_HOST="unix://$sock"
        echo "docker: reusing the engine at $DOCKER_HOST"
        return 0
    fi

    mkdir -p "$dir"
    rm -f "$sock" "$dir/dockerd.pid"
    dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
        -H "unix://$sock" --ip 127.0.0.1 >"$dir/dockerd.log" 2>&1 &
    SIDECAR_DOCKERD_PID=$!
    for i in $(seq 1 150); do
        if DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; then
            export DOCKER_HOST="unix://$sock"
            _sidecar_docker_add_exit_trap
            echo "docker: engine up at $DOCKER_HOST (pid $SIDECAR_DOCKERD_PID, ${i}x0.2 s)"
            return 0
        fi
        if ! kill -0 "$SIDECAR_DOCKERD_PID" 2>/dev/null; then
            break
        fi
        sleep 0.2
    done
    kill "$SIDECAR_DOCKERD_PID" 2>/dev/null || true
    SIDECAR_DOCKERD_PID=
    echo "docker: dockerd did not start (see $dir/dockerd.log); image tests will skip"
    return 0
}

# Stop the daemon this script started (SIGTERM, then wait up to 15 s).
sidecar_docker_stop() {
    local pid="${SIDECAR_DOCKERD_PID:-}"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 75); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    SIDECAR_DOCKERD_PID=
}

# Add sidecar_docker_stop to the caller's EXIT trap, keeping whatever it already holds.
_sidecar_docker_add_exit_trap() {
    local previous
    previous="$(trap -p EXIT)"
    if [ -n "$previous" ]; then
        eval "set -- $previous"   # -> trap -- '<command>' EXIT
        trap "sidecar_docker_stop; $3" EXIT
    else
        trap sidecar_docker_stop EXIT
    fi
}

_sidecar_docker_main
