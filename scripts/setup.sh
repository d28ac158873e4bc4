#!/usr/bin/env bash
# Installs what Gust and its tests need on a Debian machine: bubblewrap (the worker sandbox),
# slirp4netns, iproute2, nftables and procps (sandboxed workers' outbound network and filters),
# Debian's python3 and
# Node.js (the built-in environments' interpreters), Flask (Python functions written Fission's
# way), pip and npm (dependency builds), and, for the tests, openssl (a test CA),
# the message brokers the queue-trigger tests start on free ports (nats-server, mosquitto,
# redis-server, rabbitmq-server; none is left running), Chromium and chromedriver (the
# dashboard's browser tests) and componentize-py (builds the Python
# test component) in a virtualenv under target/tools.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
[ -x /usr/sbin/nft ] || [ -x /sbin/nft ] || missing+=(nftables)
[ -x /usr/sbin/sysctl ] || [ -x /sbin/sysctl ] || missing+=(procps)
[ -x /usr/bin/python3 ] || missing+=(python3)
[ -x /usr/bin/node ] || missing+=(nodejs)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# Dependency builds: pip for requirements.txt, npm for package.json, tar for their output.
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
[ -x /usr/bin/npm ] || missing+=(npm)
# Flask for functions written Fission's way (`from flask import request`).
/usr/bin/python3 -c 'import flask' >/dev/null 2>&1 || missing+=(python3-flask)
[ -x /usr/bin/tar ] || [ -x /bin/tar ] || missing+=(tar)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
# The dashboard's browser tests: headless Chromium driven through chromedriver.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    # Debian starts the brokers it installs as services; the tests start their own.
    for service in mosquitto redis-server rabbitmq-server; do
        $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
        $sudo service "$service" stop >/dev/null 2>&1 || true
    done
fi

componentize_py_version=0.25.1
venv=target/tools/componentize-py
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q " $componentize_py_version\$"; then
    echo "installing componentize-py $componentize_py_version into $venv" >&2
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "componentize-py==$componentize_py_version"
fi
