# The gateway image (docker/Dockerfile). Included by the root Makefile (PY, VENV, PYTHON come from it).
#
#   make image                       build apisix-sidecar:$(SIDECAR_VERSION) and apisix-sidecar:latest
#   make image APISIX_IMAGE=apache/apisix:3.16.0-debian      on another bookworm APISIX 3.x
#   make image EXTRA_CA=/etc/ssl/certs/ca-certificates.crt   behind a TLS-inspecting proxy: the
#                                    bundle is handed to the build stage only, never the image
#   make up                          run it on 127.0.0.1:9080 (builds it first if missing);
#                                    UP_ARGS adds `docker run` options, e.g.
#                                    UP_ARGS='-e APISIX_SIDECAR_LOG_LEVEL=debug'
#   make down                        stop and remove it
#   make test-image                  the image tests (integration/image; need a Docker engine)
#   make lint-docker                 hadolint on docker/Dockerfile (error level)

DOCKER ?= docker
SIDECAR_IMAGE ?= apisix-sidecar
SIDECAR_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
APISIX_IMAGE ?=
EXTRA_CA ?=
SIDECAR_CONTAINER ?= apisix-sidecar
UP_PORT ?= 9080
UP_ARGS ?=

.PHONY: image up down test-image lint-docker

image:
	@set -e; \
	if [ -n "$(EXTRA_CA)" ]; then cp "$(EXTRA_CA)" docker/certs/extra-ca.crt; fi; \
	status=0; \
	$(DOCKER) build -f docker/Dockerfile -t $(SIDECAR_IMAGE):$(SIDECAR_VERSION) -t $(SIDECAR_IMAGE):latest \
	    $(if $(APISIX_IMAGE),--build-arg APISIX_IMAGE=$(APISIX_IMAGE)) . || status=$$?; \
	if [ -n "$(EXTRA_CA)" ]; then rm -f docker/certs/extra-ca.crt; fi; \
	exit $$status

up:
	@$(DOCKER) image inspect $(SIDECAR_IMAGE):latest >/dev/null 2>&1 || $(MAKE) --no-print-directory image
	$(DOCKER) run -d --name $(SIDECAR_CONTAINER) -p 127.0.0.1:$(UP_PORT):9080 $(UP_ARGS) $(SIDECAR_IMAGE):latest
	@for i in $$(seq 1 60); do \
	    if $(PYTHON) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
	        http://127.0.0.1:$(UP_PORT)/say >/dev/null 2>&1; then \
	        echo "gateway up: curl 127.0.0.1:$(UP_PORT)/say"; exit 0; fi; \
	    sleep 0.5; \
	done; \
	echo "gateway not answering on 127.0.0.1:$(UP_PORT) yet; see: $(DOCKER) logs $(SIDECAR_CONTAINER)"

down:
	$(DOCKER) rm -f $(SIDECAR_CONTAINER)

test-image: $(STAMP)
	$(PY) -m pytest integration/image $(PYTEST_ARGS)

lint-docker: $(STAMP)
	$(VENV)/bin/hadolint --failure-threshold error docker/Dockerfile
