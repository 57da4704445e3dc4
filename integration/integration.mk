# The end-to-end suite against a real APISIX (integration/gateway): builds the gateway image on
# apache/apisix, runs it in standalone and traditional (etcd) mode with testcontainers. Needs a
# Docker engine that can pull the APISIX and etcd images; skips with one line where it cannot.
#   make integration APISIX_IMAGE=apache/apisix:3.16.0-debian ETCD_IMAGE=quay.io/coreos/etcd:v3.4.35
# APISIX_IMAGE, ETCD_IMAGE and EXTRA_CA (a CA bundle for the image's build stage) are read from
# the environment, so make's command-line variables reach the suite as they are.
.PHONY: integration

integration: $(STAMP)
	$(PY) -m pytest integration/gateway $(PYTEST_ARGS)
