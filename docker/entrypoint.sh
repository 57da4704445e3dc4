#!/bin/sh
# apisix-sidecar gateway entrypoint: choose APISIX's configuration, then hand over to
# apache/apisix's own /docker-entrypoint.sh with the same arguments.
#
#   APISIX_SIDECAR_DEPLOYMENT unset or "standalone": conf/config.yaml as it is (the image's
#       file-driven standalone configuration, or whatever was mounted over it).
#   APISIX_SIDECAR_DEPLOYMENT=traditional: conf/config-traditional.yaml becomes conf/config.yaml
#       (etcd + Admin API; needs APISIX_ADMIN_KEY, and APISIX_ETCD_HOST unless etcd is
#       http://etcd:2379).
set -eu

prefix="${APISIX_PREFIX:-/usr/local/apisix}"

case "${APISIX_SIDECAR_DEPLOYMENT:-standalone}" in
    standalone)
        ;;
    traditional)
        if [ -z "${APISIX_ADMIN_KEY:-}" ]; then
            echo "apisix-sidecar: APISIX_SIDECAR_DEPLOYMENT=traditional needs APISIX_ADMIN_KEY" >&2
            exit 2
        fi
        cp "$prefix/conf/config-traditional.yaml" "$prefix/conf/config.yaml"
        ;;
    *)
        echo "apisix-sidecar: APISIX_SIDECAR_DEPLOYMENT must be standalone or traditional," \
             "not '${APISIX_SIDECAR_DEPLOYMENT}'" >&2
        exit 2
        ;;
esac

exec /docker-entrypoint.sh "$@"
