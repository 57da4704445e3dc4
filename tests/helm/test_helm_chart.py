"""The Helm chart, offline: lint, render every mode and option, validate every object against the
Kubernetes 1.30 schemas (strict), and check what APISIX and the runner will get."""

from __future__ import annotations

import base64
import json
import re
import sys

import kubernetes_validate
import pytest
import yaml
from helm_support import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    REPO,
    HelmError,
    config_text,
    config_yaml,
    container,
    env_map,
    find,
    kinds,
    pod_spec,
)

FULL = "gw-apisix-sidecar"
RUNNER_BIN = "/opt/apisix-sidecar/venv/bin/apisix-sidecar"
SOCKET = "/run/apisix-sidecar/runner.sock"
RUNNER_VARS = ["APISIX_SIDECAR_LOG_LEVEL", "APISIX_SIDECAR_LOG_FORMAT"]

ROUTES = {
    "routes": [
        {"id": "r1", "uri": "/hello",
         "plugins": {"ext-plugin-pre-req": {"conf": [{"name": "say", "value": '{"body":"hi"}'}]}},
         "upstream": {"type": "roundrobin", "nodes": {"httpbin.default.svc:80": 1}}},
    ],
}

SCENARIOS: dict[str, dict | None] = {
    "default": None,
    "standalone-routes": {"apisix": {"standalone": ROUTES}},
    "sidecar": {"runner": {"mode": "sidecar", "logLevel": "debug",
                           "sidecar": {"resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                                                     "requests": {"cpu": "100m"}}}}},
    "runner-settings": {"runner": {"logLevel": "warning", "logFormat": "text",
                                   "plugins": ["my_plugins.auth:Auth", "my_plugins.rw:Rewrite"],
                                   "callTimeout": 12.5,
                                   "extraEnv": [{"name": "MY_PLUGIN_URL", "value": "http://x"}]}},
    "traditional-generated": {"apisix": {"mode": "traditional",
                                         "etcd": {"hosts": ["http://etcd-0.etcd:2379",
                                                            "http://etcd-1.etcd:2379"],
                                                  "prefix": "/edge"}}},
    "traditional-key": {"apisix": {"mode": "traditional"}, "admin": {"key": "s3cr3t-admin-key"}},
    "traditional-existing": {"apisix": {"mode": "traditional"},
                             "admin": {"existingSecret": "my-admin", "existingSecretKey": "token"}},
    "admin-service": {"apisix": {"mode": "traditional"},
                      "admin": {"enabled": True, "type": "NodePort", "port": 19180}},
    "traditional-sidecar": {"apisix": {"mode": "traditional"}, "runner": {"mode": "sidecar"}},
    "hpa": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 7,
                            "targetMemoryUtilizationPercentage": 75}},
    "pdb": {"podDisruptionBudget": {"enabled": True, "minAvailable": 2}},
    "pdb-max": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}},
    "extra-env": {"extraEnv": [{"name": "TZ", "value": "UTC"},
                               {"name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
    "nodeport": {"service": {"type": "NodePort", "nodePort": 30080, "port": 80,
                             "externalTrafficPolicy": "Local"}},
    "loadbalancer": {"service": {"type": "LoadBalancer",
                                 "annotations": {"lb.example.com/internal": "true"}}},
    "scheduling": {"nodeSelector": {"kubernetes.io/os": "linux"},
                   "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
                   "affinity": {"podAntiAffinity": {
                       "preferredDuringSchedulingIgnoredDuringExecution": [{
                           "weight": 100,
                           "podAffinityTerm": {
                               "topologyKey": "kubernetes.io/hostname",
                               "labelSelector": {"matchLabels": {
                                   "app.kubernetes.io/name": "apisix-sidecar"}}}}]}},
                   "podAnnotations": {"prometheus.io/scrape": "true"},
                   "podLabels": {"team": "edge"},
                   "imagePullSecrets": [{"name": "regcred"}],
                   "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                   "serviceAccount": {"annotations": {"example.com/role": "gw"}}},
    "no-serviceaccount": {"serviceAccount": {"create": False, "name": "shared"},
                          "probes": {"liveness": {"enabled": False, "initialDelaySeconds": 1,
                                                  "periodSeconds": 1, "timeoutSeconds": 1,
                                                  "failureThreshold": 1}}},
}


# --- lint and Kubernetes schema validation ----------------------------------------------------

@pytest.mark.parametrize("name", SCENARIOS)
def test_lint_strict(renderer, name):
    out = renderer.lint(SCENARIOS[name])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_object_validates_strict(renderer, name):
    objs = renderer.render(SCENARIOS[name])
    assert objs
    for obj in objs:
        # SchemaNotFoundError / ValidationError propagate: an unknown kind fails as well.
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_strict_validation_catches_unknown_fields(renderer):
    """Guard: the validator really is strict, so the test above means something."""
    dep = json.loads(json.dumps(find(renderer.render(), "Deployment")))
    dep["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)


# --- default: standalone + bundled ------------------------------------------------------------

def test_default_objects(renderer):
    objs = renderer.render()
    assert kinds(objs) == [("ConfigMap", FULL), ("Deployment", FULL), ("Service", FULL),
                           ("ServiceAccount", FULL)]
    dep = find(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    spec = pod_spec(objs)
    assert [c["name"] for c in spec["containers"]] == ["apisix"]
    assert [c["name"] for c in spec["initContainers"]] == ["init-conf"]
    gw = container(objs, "apisix")
    assert gw["image"] == "apisix-sidecar:0.1.0"
    assert gw["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in gw and "args" not in gw  # the image's docker-start entrypoint
    assert {p["name"]: p["containerPort"] for p in gw["ports"]} == {"http": 9080}
    svc = find(objs, "Service", FULL)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 9080, "targetPort": "http",
                                     "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert spec["serviceAccountName"] == FULL
    assert spec["automountServiceAccountToken"] is False


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    dockerfile = (CHART.parents[1] / "docker" / "Dockerfile").read_text()
    pinned = re.search(r"^ARG APISIX_IMAGE=apache/apisix:([\d.]+)-debian$", dockerfile, re.M)
    assert chart["appVersion"] == pinned.group(1), "the chart follows the image's APISIX pin"


def test_bundled_config(renderer):
    objs = renderer.render()
    cfg = config_yaml(objs)
    assert cfg["ext-plugin"] == {"cmd": [RUNNER_BIN, "run"]}
    assert cfg["deployment"] == {"role": "data_plane",
                                 "role_data_plane": {"config_provider": "yaml"}}
    assert cfg["apisix"]["node_listen"] == [9080]
    ngx = cfg["nginx_config"]
    # nginx clears the environment: the runner variables must be declared.
    for var in RUNNER_VARS:
        assert var in ngx["envs"]
    assert ngx["error_log"] == "/dev/stderr"
    assert ngx["http"]["access_log"] == "/dev/stdout"
    assert "client_body_temp_path /tmp/client_body_temp;" in ngx["http_configuration_snippet"]
    assert "plugins" not in cfg  # APISIX's default list, with the ext-plugin-* plugins
    env = env_map(container(objs, "apisix"))
    assert env["APISIX_SIDECAR_LOG_LEVEL"]["value"] == "info"
    assert env["APISIX_SIDECAR_LOG_FORMAT"]["value"] == "json"
    assert "APISIX_ADMIN_KEY" not in env
    assert set(ngx["envs"]) >= set(env)
    # the image entrypoint must keep the chart's config.yaml: no APISIX_STAND_ALONE (some
    # apache/apisix entrypoints rewrite config.yaml) and no APISIX_SIDECAR_DEPLOYMENT (the
    # apisix-sidecar entrypoint then copies its own config-traditional.yaml over it)
    for name in SCENARIOS:
        for c in pod_spec(renderer.render(SCENARIOS[name]))["containers"]:
            assert not {"APISIX_STAND_ALONE", "APISIX_SIDECAR_DEPLOYMENT"} & set(env_map(c))


def test_standalone_apisix_yaml(renderer):
    objs = renderer.render(SCENARIOS["standalone-routes"])
    text = config_text(objs, "apisix.yaml")
    assert text.rstrip("\n").endswith("\n#END")
    assert text.rstrip("\n").splitlines()[-1] == "#END"
    doc = yaml.safe_load(text)
    assert doc["routes"] == ROUTES["routes"]
    assert set(doc) == {"routes"}  # empty sections are left out
    # default: an empty but valid route list, still ending with #END
    empty = config_text(renderer.render(), "apisix.yaml")
    assert yaml.safe_load(empty) == {"routes": []}
    assert empty.rstrip("\n").splitlines()[-1] == "#END"


def has_anchor_or_alias(text: str) -> bool:
    for event in yaml.parse(text):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            return True
    return False


def test_has_anchor_or_alias_detects_them():
    assert has_anchor_or_alias("a: &x {b: 1}\nc: *x\n")
    assert not has_anchor_or_alias("a: {b: 1}\nc: {b: 1}\n")


def test_no_yaml_aliases_in_what_apisix_reads(renderer):
    """The same upstream used twice (as an anchor in the values file) must come out expanded."""
    values = """
apisix:
  standalone:
    routes:
      - id: a
        uri: /a
        upstream: &up
          type: roundrobin
          nodes:
            "web:80": 1
      - id: b
        uri: /b
        upstream: *up
  extraConfig:
    plugin_attr:
      shared: &attr {x: 1}
      other: *attr
"""
    objs = renderer.render(values)
    apisix_yaml = config_text(objs, "apisix.yaml")
    assert not has_anchor_or_alias(apisix_yaml)
    routes = yaml.safe_load(apisix_yaml)["routes"]
    assert routes[0]["upstream"] == routes[1]["upstream"] == {"type": "roundrobin",
                                                              "nodes": {"web:80": 1}}
    assert not has_anchor_or_alias(config_text(objs))
    for name, vals in SCENARIOS.items():
        for key, text in find(renderer.render(vals), "ConfigMap")["data"].items():
            assert not has_anchor_or_alias(text), (name, key)
            assert "&" not in text and "*" not in text, (name, key)


# --- sidecar mode -----------------------------------------------------------------------------

def test_sidecar_config_and_containers(renderer):
    objs = renderer.render(SCENARIOS["sidecar"])
    cfg = config_yaml(objs)
    assert cfg["ext-plugin"] == {"path_for_test": SOCKET}  # and no cmd
    spec = pod_spec(objs)
    assert [c["name"] for c in spec["containers"]] == ["apisix", "runner"]
    runner = container(objs, "runner")
    assert runner["image"] == container(objs, "apisix")["image"]
    assert runner["command"] == [RUNNER_BIN, "run", "--listen", f"unix:{SOCKET}"]
    env = env_map(runner)
    assert env["APISIX_SIDECAR_LOG_LEVEL"]["value"] == "debug"
    assert runner["resources"] == {"limits": {"cpu": "500m", "memory": "256Mi"},
                                   "requests": {"cpu": "100m"}}
    check = [RUNNER_BIN, "check", "--listen", f"unix:{SOCKET}"]
    assert runner["readinessProbe"]["exec"]["command"] == check
    assert runner["livenessProbe"]["exec"]["command"] == check
    # the runner settings are the runner container's, not APISIX's
    gw_env = env_map(container(objs, "apisix"))
    assert not any(n.startswith("APISIX_SIDECAR_") for n in gw_env)
    assert not any(n.startswith("APISIX_SIDECAR_") for n in cfg["nginx_config"]["envs"])


def test_sidecar_socket_volume_shared(renderer):
    objs = renderer.render(SCENARIOS["sidecar"])
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    socket_dir = SOCKET.rsplit("/", 1)[0]
    mounts = {}
    for name in ("apisix", "runner"):
        m = [vm for vm in container(objs, name)["volumeMounts"] if vm["mountPath"] == socket_dir]
        assert len(m) == 1, name
        assert not m[0].get("readOnly", False)
        mounts[name] = m[0]["name"]
    assert mounts["apisix"] == mounts["runner"]
    assert volumes[mounts["apisix"]] == {"name": mounts["apisix"], "emptyDir": {}}
    # bundled mode has no socket volume and no runner container
    default = renderer.render()
    assert "runner-socket" not in {v["name"] for v in pod_spec(default)["volumes"]}


def test_runner_settings_reach_the_runner(renderer):
    objs = renderer.render(SCENARIOS["runner-settings"])
    env = env_map(container(objs, "apisix"))
    assert env["APISIX_SIDECAR_LOG_LEVEL"]["value"] == "warning"
    assert env["APISIX_SIDECAR_LOG_FORMAT"]["value"] == "text"
    assert env["APISIX_SIDECAR_PLUGINS"]["value"] == "my_plugins.auth:Auth,my_plugins.rw:Rewrite"
    assert env["APISIX_SIDECAR_CALL_TIMEOUT"]["value"] == "12.5"
    assert env["MY_PLUGIN_URL"]["value"] == "http://x"
    envs = config_yaml(objs)["nginx_config"]["envs"]
    for var in ["APISIX_SIDECAR_LOG_LEVEL", "APISIX_SIDECAR_LOG_FORMAT", "APISIX_SIDECAR_PLUGINS",
                "APISIX_SIDECAR_CALL_TIMEOUT", "MY_PLUGIN_URL"]:
        assert var in envs
    assert len(envs) == len(set(envs))
    # the same settings in sidecar mode go to the runner container
    side = renderer.render({"runner": {**SCENARIOS["runner-settings"]["runner"],
                                       "mode": "sidecar"}})
    renv = env_map(container(side, "runner"))
    assert renv["APISIX_SIDECAR_PLUGINS"]["value"] == "my_plugins.auth:Auth,my_plugins.rw:Rewrite"
    assert renv["APISIX_SIDECAR_CALL_TIMEOUT"]["value"] == "12.5"
    assert renv["MY_PLUGIN_URL"]["value"] == "http://x"
    assert "MY_PLUGIN_URL" not in env_map(container(side, "apisix"))
    # unset plugins / timeout: no variable, the runner's defaults apply
    default_env = env_map(container(renderer.render(), "apisix"))
    assert "APISIX_SIDECAR_PLUGINS" not in default_env
    assert "APISIX_SIDECAR_CALL_TIMEOUT" not in default_env


# --- security ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "sidecar", "traditional-sidecar"])
def test_security_settings(renderer, name):
    objs = renderer.render(SCENARIOS[name])
    spec = pod_spec(objs)
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 636 and psc["runAsGroup"] == 636 and psc["fsGroup"] == 636
    all_containers = spec["containers"] + spec["initContainers"]
    assert len(all_containers) == (3 if "sidecar" in name else 2)
    for c in all_containers:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in sc["capabilities"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 636, c["name"]
        assert sc.get("privileged", False) is False


def test_writable_paths_are_emptydirs(renderer):
    """Read-only root: the only writable mounts are emptyDirs where APISIX/the runner write."""
    objs = renderer.render(SCENARIOS["sidecar"])
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    expected = {
        "apisix": {"/usr/local/apisix/conf", "/usr/local/apisix/logs", "/tmp",
                   "/run/apisix-sidecar"},
        "runner": {"/run/apisix-sidecar", "/tmp"},
        "init-conf": {"/apisix-conf"},
    }
    for name, paths in expected.items():
        writable = set()
        for vm in container(objs, name)["volumeMounts"]:
            vol = volumes[vm["name"]]
            if "emptyDir" in vol:
                writable.add(vm["mountPath"])
            else:
                assert vm.get("readOnly") is True, (name, vm)
                assert "configMap" in vol
        assert writable == paths, name
    # the init container fills the conf emptyDir the gateway mounts at conf/
    conf_vol = next(vm["name"] for vm in container(objs, "apisix")["volumeMounts"]
                    if vm["mountPath"] == "/usr/local/apisix/conf")
    assert next(vm["name"] for vm in container(objs, "init-conf")["volumeMounts"]
                if vm["mountPath"] == "/apisix-conf") == conf_vol


def test_init_container_copies_image_conf_first(renderer):
    script = container(renderer.render(), "init-conf")["command"][-1].splitlines()
    assert script[0] == "cp -R /usr/local/apisix/conf/. /apisix-conf/"  # mime.types, debug.yaml..
    assert script[1] == "cp /etc/apisix-sidecar/config.yaml /apisix-conf/config.yaml"
    assert script[2] == "ln -sf /etc/apisix-sidecar/apisix.yaml /apisix-conf/apisix.yaml"
    assert container(renderer.render(), "init-conf")["command"][:2] == ["/bin/sh", "-ec"]
    trad = container(renderer.render(SCENARIOS["traditional-generated"]), "init-conf")
    assert "apisix.yaml" not in trad["command"][-1]


def test_gateway_probes_tcp_on_data_plane(renderer):
    gw = container(renderer.render(), "apisix")
    for probe in ("readinessProbe", "livenessProbe"):
        assert gw[probe]["tcpSocket"] == {"port": "http"}
    gw = container(renderer.render(SCENARIOS["no-serviceaccount"]), "apisix")
    assert "livenessProbe" not in gw and "readinessProbe" in gw


# --- traditional mode and the admin key ------------------------------------------------------

def test_traditional_generated_secret(renderer):
    objs = renderer.render(SCENARIOS["traditional-generated"])
    cfg = config_yaml(objs)
    assert cfg["deployment"]["role"] == "traditional"
    assert cfg["deployment"]["role_traditional"] == {"config_provider": "etcd"}
    assert cfg["deployment"]["etcd"] == {"host": ["http://etcd-0.etcd:2379",
                                                  "http://etcd-1.etcd:2379"],
                                         "prefix": "/edge", "timeout": 30}
    admin = cfg["deployment"]["admin"]
    assert admin["admin_key_required"] is True
    assert admin["admin_key"] == [{"name": "admin", "key": "${{APISIX_ADMIN_KEY}}",
                                   "role": "admin"}]
    assert admin["admin_listen"] == {"ip": "0.0.0.0", "port": 9180}
    assert "APISIX_ADMIN_KEY" in cfg["nginx_config"]["envs"]
    assert "apisix.yaml" not in find(objs, "ConfigMap")["data"]
    secret = find(objs, "Secret", f"{FULL}-admin")
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    assert len(key) == 32 and key.isalnum()
    env = env_map(container(objs, "apisix"))
    assert env["APISIX_ADMIN_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{FULL}-admin", "key": "admin-key"}}
    assert "APISIX_STAND_ALONE" not in env
    ports = {p["name"]: p["containerPort"] for p in container(objs, "apisix")["ports"]}
    assert ports == {"http": 9080, "admin": 9180}
    # the key is not in the ConfigMap
    assert key not in json.dumps(find(objs, "ConfigMap"))


def test_traditional_given_key(renderer):
    objs = renderer.render(SCENARIOS["traditional-key"])
    secret = find(objs, "Secret", f"{FULL}-admin")
    assert base64.b64decode(secret["data"]["admin-key"]) == b"s3cr3t-admin-key"


def test_traditional_existing_secret(renderer):
    objs = renderer.render(SCENARIOS["traditional-existing"])
    assert not [o for o in objs if o["kind"] == "Secret"]
    env = env_map(container(objs, "apisix"))
    assert env["APISIX_ADMIN_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "my-admin", "key": "token"}}


def test_admin_service(renderer):
    objs = renderer.render(SCENARIOS["admin-service"])
    svc = find(objs, "Service", f"{FULL}-admin")
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [{"name": "admin", "port": 19180, "targetPort": "admin",
                                     "protocol": "TCP"}]
    assert "10.0.0.0/8" in config_yaml(objs)["deployment"]["admin"]["allow_admin"]
    assert not [o for o in renderer.render(SCENARIOS["traditional-generated"])
                if o["metadata"]["name"] == f"{FULL}-admin" and o["kind"] == "Service"]
    with pytest.raises(HelmError, match="admin.enabled needs apisix.mode=traditional"):
        renderer.render({"admin": {"enabled": True}})


def test_traditional_sidecar(renderer):
    cfg = config_yaml(renderer.render(SCENARIOS["traditional-sidecar"]))
    assert cfg["ext-plugin"] == {"path_for_test": SOCKET}
    assert cfg["deployment"]["role"] == "traditional"


# --- options ----------------------------------------------------------------------------------

def test_hpa(renderer):
    objs = renderer.render(SCENARIOS["hpa"])
    hpa = find(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": FULL}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 7)
    metrics = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
               for m in hpa["spec"]["metrics"]}
    assert metrics == {"cpu": 80, "memory": 75}
    assert "replicas" not in find(objs, "Deployment")["spec"]
    assert not [o for o in renderer.render() if o["kind"] == "HorizontalPodAutoscaler"]


def test_pdb(renderer):
    pdb = find(renderer.render(SCENARIOS["pdb"]), "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "apisix-sidecar", "app.kubernetes.io/instance": "gw"}
    pdb = find(renderer.render(SCENARIOS["pdb-max"]), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == "50%" and "minAvailable" not in pdb["spec"]
    assert not [o for o in renderer.render() if o["kind"] == "PodDisruptionBudget"]


def test_extra_env(renderer):
    env = env_map(container(renderer.render(SCENARIOS["extra-env"]), "apisix"))
    assert env["TZ"] == {"name": "TZ", "value": "UTC"}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_service_types(renderer):
    svc = find(renderer.render(SCENARIOS["nodeport"]), "Service", FULL)
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["spec"]["ports"][0] == {"name": "http", "port": 80, "targetPort": "http",
                                       "protocol": "TCP", "nodePort": 30080}
    svc = find(renderer.render(SCENARIOS["loadbalancer"]), "Service", FULL)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["metadata"]["annotations"] == {"lb.example.com/internal": "true"}
    assert "nodePort" not in svc["spec"]["ports"][0]


def test_scheduling_and_pod_metadata(renderer):
    objs = renderer.render(SCENARIOS["scheduling"])
    spec = pod_spec(objs)
    vals = SCENARIOS["scheduling"]
    assert spec["nodeSelector"] == vals["nodeSelector"]
    assert spec["tolerations"] == vals["tolerations"]
    assert spec["affinity"] == vals["affinity"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    meta = find(objs, "Deployment")["spec"]["template"]["metadata"]
    assert meta["annotations"]["prometheus.io/scrape"] == "true"
    assert "checksum/config" in meta["annotations"]
    assert meta["labels"]["team"] == "edge"
    assert container(objs, "apisix")["resources"] == {"limits": {"cpu": "1", "memory": "512Mi"}}
    sa = find(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"example.com/role": "gw"}


def test_existing_service_account(renderer):
    objs = renderer.render(SCENARIOS["no-serviceaccount"])
    assert not [o for o in objs if o["kind"] == "ServiceAccount"]
    assert pod_spec(objs)["serviceAccountName"] == "shared"


def test_extra_config_and_plugins(renderer):
    cfg = config_yaml(renderer.render({"apisix": {
        "plugins": ["proxy-rewrite", "ext-plugin-pre-req", "ext-plugin-post-resp"],
        "extraConfig": {"apisix": {"enable_control": False},
                        "nginx_config": {"worker_rlimit_nofile": 4096}}}}))
    assert cfg["plugins"] == ["proxy-rewrite", "ext-plugin-pre-req", "ext-plugin-post-resp"]
    assert cfg["apisix"]["enable_control"] is False
    assert cfg["apisix"]["node_listen"] == [9080]  # merged, not replaced
    assert cfg["nginx_config"]["worker_rlimit_nofile"] == 4096
    assert cfg["ext-plugin"] == {"cmd": [RUNNER_BIN, "run"]}
    with pytest.raises(HelmError, match="apisix.plugins must contain ext-plugin"):
        renderer.render({"apisix": {"plugins": ["proxy-rewrite"]}})
    with pytest.raises(HelmError, match="APISIX_SIDECAR_DEPLOYMENT"):
        renderer.render({"extraEnv": [{"name": "APISIX_SIDECAR_DEPLOYMENT",
                                       "value": "traditional"}]})


# --- checksum annotation ----------------------------------------------------------------------

def checksum(objs):
    return find(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"]


def test_checksum_follows_config(renderer):
    base = checksum(renderer.render())
    assert len(base) == 64
    assert checksum(renderer.render({"replicaCount": 1})) == base  # same config, same sum
    assert checksum(renderer.render({"replicaCount": 3})) == base  # not a config value
    changed = [
        checksum(renderer.render({"runner": {"plugins": ["my_plugins.auth:Auth"]}})),
        checksum(renderer.render({"apisix": {"standalone": {"upstreams": [{"id": "u"}]}}})),
        checksum(renderer.render(SCENARIOS["standalone-routes"])),
        checksum(renderer.render(SCENARIOS["sidecar"])),
        checksum(renderer.render({"apisix": {"nginx": {"workerProcesses": 2}}})),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)
    # (runner.logLevel etc. are container env: they change the pod template by themselves)
    # a generated (random) admin key does not roll the pods on every upgrade
    assert (checksum(renderer.render(SCENARIOS["traditional-generated"]))
            == checksum(renderer.render(SCENARIOS["traditional-generated"] | {"replicaCount": 2})))


# --- schema -----------------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"runner": {"mode": "foo"}}, "runner.mode must be one of"),
    ({"apisix": {"mode": "decoupled"}}, "apisix.mode must be one of"),
    ({"unknownKey": 1}, "Additional property unknownKey is not allowed"),
    ({"runner": {"sidecar": {"socket": "/x"}}}, "Additional property socket is not allowed"),
    ({"replicaCount": "3"}, "replicaCount: Invalid type. Expected: integer, given: string"),
    ({"service": {"type": "Ingress"}}, "service.type must be one of"),
    ({"service": {"port": 70000}}, "service.port"),
    ({"image": {"tag": 1}}, "image.tag: Invalid type"),
    ({"runner": {"callTimeout": "10s"}}, "runner.callTimeout: Invalid type"),
    ({"runner": {"plugins": ["no-colon"]}}, "runner.plugins.0"),
    ({"probes": {"readiness": {"enabled": "yes"}}}, "probes.readiness.enabled: Invalid type"),
    ({"securityContext": {"runAsUser": "root"}}, "securityContext.runAsUser: Invalid type"),
    ({"extraEnv": [{"value": "x"}]}, "name is required"),
    ({"autoscaling": {"maxReplicas": 0}}, "autoscaling.maxReplicas"),
    ({"apisix": {"etcd": {"hosts": ["etcd:2379"]}}}, "apisix.etcd.hosts.0"),
])
def test_schema_rejects(renderer, values, message):
    with pytest.raises(HelmError) as err:
        renderer.render(values)
    assert "values don't meet the specifications of the schema" in err.value.stderr
    assert message in err.value.stderr


def test_schema_closes_every_object():
    """additionalProperties: false on every object the chart defines (Kubernetes and APISIX
    objects passed through as-is are the only open ones, and only below the chart's keys)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_ok = {"valueFrom", "extraConfig", "global", "seLinuxOptions", "seccompProfile",
               "windowsOptions", "appArmorProfile", "nodeAffinity", "podAffinity",
               "podAntiAffinity", "items"}

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, path
            elif node.get("type") == "object" and "additionalProperties" not in node:
                assert path.rsplit(".", 1)[-1] in open_ok, path
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(schema, "$")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


# --- documentation ----------------------------------------------------------------------------

def test_every_value_documented_and_readme_current():
    sys.path.insert(0, str(REPO / "helm"))
    import gen_readme

    text = (CHART / "values.yaml").read_text()
    documented = [p for p, desc in gen_readme.documented_values(text) if desc]

    def leaves(node, prefix=""):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix[:-1]

    for leaf in leaves(yaml.safe_load(text)):
        assert any(leaf == d or leaf.startswith(d + ".") for d in documented), leaf
    assert gen_readme.main(["gen_readme.py", "--check"]) == 0


def test_notes(renderer):
    notes = renderer.notes()
    assert "port-forward svc/gw-apisix-sidecar 9080:9080" in notes
    assert f"http://{FULL}.{NAMESPACE}.svc:9080/" in notes
    assert "plugin runner: bundled" in notes
    notes = renderer.notes(SCENARIOS["nodeport"])
    assert "NODE_PORT=$(kubectl get" in notes
    notes = renderer.notes(SCENARIOS["admin-service"] | {"runner": {"mode": "sidecar"}})
    assert f"port-forward svc/{FULL}-admin 9180:19180" in notes
    assert f"get secret --namespace {NAMESPACE} {FULL}-admin" in notes
    assert SOCKET in notes
