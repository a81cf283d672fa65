"""The chart through the real Helm engine (helm-python-sdk): every documented mode, values, RBAC, schemas."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from gfd.config import load_config, parse_command_line
from tests.requirements import require_shared

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm"
NS = "nvidia-device-plugin"
K8S_VERSION = "1.33.0"
UPSTREAM_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In",
                           "values": ["true"]}]},
    {"matchExpressions": [{"key": "feature.node.kubernetes.io/cpu-model.vendor_id", "operator": "In",
                           "values": ["NVIDIA"]}]},
    {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}]}}}
UPSTREAM_TOLERATIONS = [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.fixture(scope="module")
def chart() -> Any:
    return helm_python.Chart.load(str(CHART))


def render(chart: Any, values: dict[str, Any] | None = None, namespace: str = NS) -> dict[tuple[str, str], Any]:
    out = chart.render(values or {}, name="nvdp", namespace=namespace)
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container(objects: dict[tuple[str, str], Any], daemonset: str, name: str) -> dict[str, Any]:
    spec = objects[("DaemonSet", daemonset)]["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


PLUGIN, GFD = "nvdp-nvidia-device-plugin", "nvdp-nvidia-device-plugin-gpu-feature-discovery"
MPS = "nvdp-nvidia-device-plugin-mps-control-daemon"
MODES = {
    "plugin only (default)": ({}, {PLUGIN, MPS}),
    "combined": ({"gfd": {"enabled": True}}, {PLUGIN, GFD, MPS}),
    "standalone GFD": ({"gfd": {"enabled": True}, "devicePlugin": {"enabled": False}}, {GFD}),
    "nothing but RBAC (upstream README's standalone command)": ({"devicePlugin": {"enabled": False}}, set()),
}


@pytest.mark.parametrize("mode", MODES)
def test_daemonsets_per_mode(chart: Any, mode: str) -> None:
    values, expected = MODES[mode]
    objects = render(chart, values)
    assert {name for kind, name in objects if kind == "DaemonSet"} == expected
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises on any schema violation


@pytest.mark.parametrize("mode", MODES)
def test_rendering_is_fast(chart: Any, mode: str) -> None:
    started = time.perf_counter()
    render(chart, MODES[mode][0])
    assert time.perf_counter() - started < 2.0  # the issue's bound; a render takes milliseconds


def test_lint_is_clean_but_for_the_unvendored_nfd_subchart() -> None:
    report = helm_python.lint(str(CHART), namespace=NS, strict=False)
    assert report["errors"] == []
    findings = [(m["severity"], m["error"]) for m in report["messages"]]
    # NFD is fetched with `helm dependency update helm/` (needs registry.k8s.io; not reachable here).
    assert findings == [(2, "chart directory is missing these dependencies: node-feature-discovery")]


def test_chart_declares_nfd_like_upstream() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["dependencies"] == [{"name": "node-feature-discovery", "alias": "nfd", "version": "0.19.0",
                                     "repository": "oci://registry.k8s.io/nfd/charts",
                                     "condition": "nfd.enabled,gfd.enabled"}]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["nfd"]["master"]["config"]["extraLabelNs"] == ["nvidia.com"]
    assert values["nfd"]["worker"]["config"]["sources"]["pci"] == {"deviceClassWhitelist": ["02", "03"],
                                                                  "deviceLabelFields": ["vendor"]}


def test_plugin_daemonset_defaults(chart: Any) -> None:
    objects = render(chart)
    pod = objects[("DaemonSet", PLUGIN)]["spec"]["template"]["spec"]
    assert pod["affinity"] == UPSTREAM_AFFINITY and pod["tolerations"] == UPSTREAM_TOLERATIONS
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "nvdp-nvidia-device-plugin-service-account"
    ctr = container(objects, PLUGIN, "nvidia-device-plugin-ctr")
    assert ctr["command"] == ["nvidia-device-plugin"]
    assert ctr["image"] == "ghcr.io/gfd-py/k8s-device-plugin:v0.1.0"
    assert env(ctr) == {"MPS_ROOT": "/run/nvidia/mps", "NVIDIA_VISIBLE_DEVICES": "all",
                        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    assert ctr["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                      "capabilities": {"drop": ["ALL"]}}
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v.get("hostPath") for v in pod["volumes"]}
    assert mounts["kubelet-device-plugins-dir"] == "/var/lib/kubelet/device-plugins"
    assert volumes["kubelet-device-plugins-dir"] == {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}
    assert volumes["cdi-root"] == {"path": "/var/run/cdi", "type": "DirectoryOrCreate"}
    assert "initContainers" not in pod and "shareProcessNamespace" not in pod


def test_the_rendered_plugin_writes_cdi_specs_into_the_hosts_cdi_directory(chart: Any) -> None:
    """The plugin's config, from the rendered env alone: where it reads the driver and writes specs is
    where the chart mounts the host's driver root and CDI directory, and host paths name the host's root."""
    from plugin.config import load_plugin_config

    objects = render(chart, {"deviceListStrategy": "cdi-cri", "nvidiaDriverRoot": "/run/nvidia/driver"})
    ctr = container(objects, PLUGIN, "nvidia-device-plugin-ctr")
    config = load_plugin_config(ctr.get("args", []), {k: v for k, v in env(ctr).items() if isinstance(v, str)})
    pod = objects[("DaemonSet", PLUGIN)]["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounted = {m["mountPath"]: host_paths.get(m["name"]) for m in ctr["volumeMounts"]}
    assert config.cdi_enabled and mounted[config.cdi_spec_dir] == "/var/run/cdi"
    assert mounted[config.container_driver_root] == config.nvidia_driver_root == "/run/nvidia/driver"


def test_mps_control_daemon_daemonset_as_upstream(chart: Any) -> None:
    objects = render(chart, {"config": {"map": {"default": "version: v1\n", "mps": "version: v1\nsharing:\n  mps:\n"
                                                "    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n"}},
                             "migStrategy": "single", "nodeSelector": {"pool": "gpu"}})
    pod = objects[("DaemonSet", MPS)]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/mps.capable": "true", "pool": "gpu"} and pod["hostPID"] is True
    init = [c["name"] for c in pod["initContainers"]]
    assert init == ["mps-control-daemon-mounts", "mps-control-daemon-init"]
    mounts = container(objects, MPS, "mps-control-daemon-mounts")
    assert mounts["command"] == ["mps-control-daemon", "mount-shm"]
    assert mounts["securityContext"] == {"privileged": True}
    assert mounts["volumeMounts"] == [{"name": "mps-root", "mountPath": "/mps", "mountPropagation": "Bidirectional"}]
    ctr = container(objects, MPS, "mps-control-daemon-ctr")
    assert ctr["command"] == ["mps-control-daemon"] and ctr["securityContext"] == {"privileged": True}
    assert env(ctr) == {"NODE_NAME": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
                        "MIG_STRATEGY": "single", "CONFIG_FILE": "/config/config.yaml",
                        "NVIDIA_MIG_MONITOR_DEVICES": "all", "NVIDIA_VISIBLE_DEVICES": "all",
                        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    assert {m["mountPath"] for m in ctr["volumeMounts"]} == {"/dev/shm", "/mps", "/available-configs", "/config"}
    sidecar = container(objects, MPS, "mps-control-daemon-sidecar")
    assert env(sidecar)["PROCESS_TO_SIGNAL"] == "mps-control-daemon"
    volumes = {v["name"]: v.get("hostPath") for v in pod["volumes"]}
    assert volumes["mps-root"] == {"path": "/run/nvidia/mps", "type": "DirectoryOrCreate"}
    assert volumes["mps-shm"] == {"path": "/run/nvidia/mps/shm"}
    # The plugin mounts the same host directory where the daemon writes its pipes and readiness.
    plugin = objects[("DaemonSet", PLUGIN)]["spec"]["template"]["spec"]
    assert {v["name"]: v.get("hostPath") for v in plugin["volumes"]}["mps-root"] == volumes["mps-root"]
    assert pod.get("shareProcessNamespace") is None
    no_host_pid = render(chart, {"mps": {"enableHostPID": False}})[("DaemonSet", MPS)]["spec"]["template"]["spec"]
    assert no_host_pid["shareProcessNamespace"] is True and "hostPID" not in no_host_pid


def test_the_rendered_mps_daemon_and_plugin_agree_on_the_root(chart: Any) -> None:
    """Both programs' configs, from the rendered env alone, look for MPS under their /mps mount."""
    from plugin.config import load_plugin_config
    from plugin.mps.cli import load_daemon_config

    objects = render(chart)
    daemon_ctr, plugin_ctr = container(objects, MPS, "mps-control-daemon-ctr"), \
        container(objects, PLUGIN, "nvidia-device-plugin-ctr")
    strings = {k: v for k, v in env(daemon_ctr).items() if isinstance(v, str)}
    daemon_root = load_daemon_config([], strings).mps_container_root
    plugin_config = load_plugin_config([], {k: v for k, v in env(plugin_ctr).items() if isinstance(v, str)})
    assert daemon_root == plugin_config.mps_container_root == "/mps"
    assert "/mps" in {m["mountPath"] for m in daemon_ctr["volumeMounts"]} & \
        {m["mountPath"] for m in plugin_ctr["volumeMounts"]}
    assert plugin_config.mps_root == "/run/nvidia/mps"  # what Allocate mounts into pods: the host's path


def test_values_become_env_and_security_contexts(chart: Any) -> None:
    objects = render(chart, {"gfd": {"enabled": True}, "migStrategy": "mixed", "failOnInitError": False,
                             "compatWithCPUManager": True, "deviceListStrategy": "envvar,cdi-cri",
                             "deviceIDStrategy": "index", "nvidiaDriverRoot": "/run/nvidia/driver",
                             "gdsEnabled": True, "deviceDiscoveryStrategy": "nvml", "noTimestamp": True,
                             "sleepInterval": "30s", "runtimeClassName": "nvidia",
                             "cdi": {"nvidiaHookPath": "/usr/local/bin/nvidia-cdi-hook"}})
    plugin = container(objects, PLUGIN, "nvidia-device-plugin-ctr")
    assert env(plugin) == {
        "MPS_ROOT": "/run/nvidia/mps", "MIG_STRATEGY": "mixed", "FAIL_ON_INIT_ERROR": "false",
        "PASS_DEVICE_SPECS": "true", "DEVICE_LIST_STRATEGY": "envvar,cdi-cri", "DEVICE_ID_STRATEGY": "index",
        "NVIDIA_DRIVER_ROOT": "/run/nvidia/driver", "NVIDIA_CDI_HOOK_PATH": "/usr/local/bin/nvidia-cdi-hook",
        "GDS_ENABLED": "true", "NVIDIA_MIG_MONITOR_DEVICES": "all", "DEVICE_DISCOVERY_STRATEGY": "nvml",
        "NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    assert plugin["securityContext"] == {"privileged": True}
    assert {"name": "driver-root", "mountPath": "/driver-root", "readOnly": True} in plugin["volumeMounts"]
    gfd = container(objects, GFD, "gpu-feature-discovery-ctr")
    assert env(gfd) == {
        "NODE_NAME": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        "NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "MIG_STRATEGY": "mixed", "FAIL_ON_INIT_ERROR": "false", "GFD_NO_TIMESTAMP": "true",
        "GFD_SLEEP_INTERVAL": "30s", "NVIDIA_MIG_MONITOR_DEVICES": "all", "DEVICE_DISCOVERY_STRATEGY": "nvml"}
    assert gfd["securityContext"] == {"privileged": True}
    for name in (PLUGIN, GFD):
        assert objects[("DaemonSet", name)]["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


@pytest.mark.parametrize(("values", "expected"), [
    ({"migStrategy": "single"}, {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"],
                                                                                 "add": ["SYS_ADMIN"]}}),
    ({"deviceListStrategy": "volume-mounts"}, {"readOnlyRootFilesystem": True,
                                               "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}),
    ({"migStrategy": "none"}, {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                               "capabilities": {"drop": ["ALL"]}}),
    ({"securityContext": {"runAsUser": 0}}, {"runAsUser": 0}),
])
def test_plugin_security_context_rules(chart: Any, values: dict[str, Any], expected: dict[str, Any]) -> None:
    assert container(render(chart, values), PLUGIN, "nvidia-device-plugin-ctr")["securityContext"] == expected


def test_gfd_daemonset_mounts_and_unprivileged_option(chart: Any) -> None:
    objects = render(chart, {"gfd": {"enabled": True, "securityContext": None}})  # null drops the default
    pod = objects[("DaemonSet", GFD)]["spec"]["template"]["spec"]
    ctr = container(objects, GFD, "gpu-feature-discovery-ctr")
    assert ctr["command"] == ["gpu-feature-discovery"]
    assert {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]} == {
        "output-dir": "/etc/kubernetes/node-feature-discovery/features.d", "host-sys": "/sys", "config": "/config"}
    volumes = {v["name"]: v.get("hostPath") for v in pod["volumes"]}
    assert volumes["output-dir"] == {"path": "/etc/kubernetes/node-feature-discovery/features.d",
                                     "type": "DirectoryOrCreate"}
    assert volumes["host-sys"] == {"path": "/sys", "type": "Directory"}
    assert ctr["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                      "capabilities": {"drop": ["ALL"]}}
    assert pod["affinity"] == UPSTREAM_AFFINITY


def rules(objects: dict[tuple[str, str], Any], kind: str, name: str) -> list[tuple[tuple[str, ...], ...]]:
    return [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in objects[(kind, name)]["rules"]]


def test_rbac_is_least_privilege(chart: Any) -> None:
    plugin_only = render(chart)
    assert not any(kind in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding") for kind, _ in plugin_only)
    combined = render(chart, {"gfd": {"enabled": True}, "config": {"map": {"default": "version: v1"}}})
    assert rules(combined, "Role", GFD) == [(("nfd.k8s-sigs.io",), ("nodefeatures",),
                                             ("get", "list", "watch", "create", "update")),
                                            (("",), ("pods",), ("get",))]
    assert combined[("Role", GFD)]["metadata"]["namespace"] == NS
    assert rules(combined, "ClusterRole", "nvdp-nvidia-device-plugin-role") == [
        (("",), ("nodes",), ("get", "list", "watch"))]
    binding = combined[("RoleBinding", GFD)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nvdp-nvidia-device-plugin-service-account",
                                    "namespace": NS}]
    assert binding["roleRef"] == {"kind": "Role", "name": GFD, "apiGroup": "rbac.authorization.k8s.io"}


def test_config_map_mode(chart: Any) -> None:
    configs = {"default": "version: v1\nflags:\n  migStrategy: none\n",
               "mig-mixed": "version: v1\nflags:\n  migStrategy: mixed\n"}
    objects = render(chart, {"gfd": {"enabled": True}, "config": {"map": configs, "default": "default"}})
    assert objects[("ConfigMap", "nvdp-nvidia-device-plugin-configs")]["data"] == {
        k: v.rstrip("\n") for k, v in configs.items()}
    for ds, main_process, prefix in ((PLUGIN, "nvidia-device-plugin", "nvidia-device-plugin"),
                                     (GFD, "gpu-feature-discovery", "gpu-feature-discovery")):
        pod = objects[("DaemonSet", ds)]["spec"]["template"]
        assert pod["spec"]["shareProcessNamespace"] is True
        assert "checksum/config" in pod["metadata"]["annotations"]
        init, sidecar = container(objects, ds, f"{prefix}-init"), container(objects, ds, f"{prefix}-sidecar")
        assert init["command"] == sidecar["command"] == ["config-manager"]
        assert env(init)["ONESHOT"] == "true" and env(init)["SEND_SIGNAL"] == "false"
        assert env(sidecar)["ONESHOT"] == "false" and env(sidecar)["SEND_SIGNAL"] == "true"
        assert env(sidecar)["PROCESS_TO_SIGNAL"] == main_process and env(sidecar)["SIGNAL"] == "1"
        assert env(init)["DEFAULT_CONFIG"] == "default" and env(init)["FALLBACK_STRATEGIES"] == "named,single"
        main = container(objects, ds, f"{prefix}-ctr")
        assert env(main)["CONFIG_FILE"] == "/config/config.yaml"
        assert env(main)["NVIDIA_MIG_MONITOR_DEVICES"] == "all"  # a config may enable MIG


@pytest.mark.parametrize(("values", "namespace", "message"), [
    ({"namespace": "x"}, NS, "Value 'namespace' set to x"),
    ({}, "default", "Running in the 'default' namespace is not recommended."),
    ({"config": {"name": "cm", "map": {"a": "x"}}}, NS, "Only one of 'config.name' or 'config.map'"),
    ({"config": {"map": {"a": "x", "b": "y"}, "fallbackStrategies": ["named"]}}, NS,
     "Fallbacks are attempted in order and the current set is [named]."),
])
def test_upstream_validation_errors(chart: Any, values: dict[str, Any], namespace: str, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as e:
        render(chart, values, namespace)
    assert message in str(e.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"migStrategy": "mixxed"}, "at '/migStrategy': value must be one of 'none', 'single', 'mixed'"),
    ({"migStategy": "mixed"}, "additional properties 'migStategy' not allowed"),
    ({"gfd": {"enabled": "yes"}}, "at '/gfd/enabled': got string, want boolean"),
    ({"deviceListStrategy": "envvar,bogus"}, "at '/deviceListStrategy'"),
])
def test_schema_rejects_mistyped_values(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message.replace("(", r"\(").replace("[", r"\[")):
        render(chart, values)


def test_upstream_readme_values_render_and_their_configs_load(chart: Any, tmp_path: Path) -> None:
    values = yaml.safe_load((ROOT / "tests/data/upstream-readme-values.yaml").read_text())
    objects = render(chart, values)
    assert ("DaemonSet", GFD) in objects and ("DaemonSet", PLUGIN) in objects
    for name, text in values["config"]["map"].items():
        path = tmp_path / name
        path.write_text(text)
        load_config(parse_command_line(["--config-file", str(path)], {}))  # our loader accepts each


def test_static_manifests_are_the_chart(tmp_path: Path) -> None:
    import runpy

    generator = runpy.run_path(str(CHART / "static/generate.py"))
    for name, (namespace, release, values) in generator["MANIFESTS"].items():
        committed = (CHART / "static" / name).read_text()
        assert committed == generator["render"](namespace, release, values), f"{name} drifted: regenerate it"
        for doc in yaml.safe_load_all(committed):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_nfd_rules_validate_against_the_crd(nfd_schemas: dict[str, Any]) -> None:
    for path in sorted((ROOT / "nfd-rules").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc.get("kind") == "NodeFeatureRule":
                jsonschema.validate(doc, nfd_schemas["NodeFeatureRule"])
                assert doc["spec"]["rules"][0]["labels"] == {"feature.node.kubernetes.io/pci-10de.present": "true"}
    worker = yaml.safe_load((ROOT / "nfd-rules/nfd-worker.conf.yaml").read_text())
    assert worker["sources"]["pci"] == {"deviceClassWhitelist": ["02", "03"], "deviceLabelFields": ["vendor"]}


METRICS_ON = {"gfd": {"enabled": True, "metrics": {"enabled": True}}, "devicePlugin": {"metrics": {"enabled": True}},
              "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prometheus"}}}


def test_metrics_values_give_ports_probes_a_service_and_a_service_monitor(chart: Any) -> None:
    crds = require_shared("crds", "monitoring.coreos.com_servicemonitors.yaml")
    objects = render(chart, METRICS_ON)
    for daemonset, ctr, variable, port in ((PLUGIN, "nvidia-device-plugin-ctr", "DP_METRICS_ADDRESS", 9103),
                                           (GFD, "gpu-feature-discovery-ctr", "GFD_METRICS_ADDRESS", 9102)):
        c = container(objects, daemonset, ctr)
        assert env(c)[variable] == f":{port}"
        assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["resources"]["requests"] == {"cpu": "10m", "memory": "64Mi"}
    service = objects[("Service", "nvdp-nvidia-device-plugin-metrics")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod_labels = objects[("DaemonSet", PLUGIN)]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for obj in objects.values():
        if obj["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    monitor = objects[("ServiceMonitor", "nvdp-nvidia-device-plugin")]
    crd = yaml.safe_load((crds / "monitoring.coreos.com_servicemonitors.yaml").read_text())
    jsonschema.validate(monitor, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_gpu_telemetry_values_give_a_port_the_pod_resources_socket_and_a_scrape_target(chart: Any) -> None:
    from plugin.config import load_plugin_config

    objects = render(chart, {"devicePlugin": {"gpuMetrics": {"enabled": True}},
                             "serviceMonitor": {"enabled": True}})
    c = container(objects, PLUGIN, "nvidia-device-plugin-ctr")
    assert env(c)["DP_GPU_METRICS_ADDRESS"] == ":9101"
    assert c["ports"] == [{"name": "gpu-metrics", "containerPort": 9101, "protocol": "TCP"}]
    assert "livenessProbe" not in c  # probes follow the plugin's own /healthz, which is off here
    config = load_plugin_config([], {k: v for k, v in env(c).items() if isinstance(v, str)})
    pod = objects[("DaemonSet", PLUGIN)]["spec"]["template"]["spec"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "pod-resources")
    assert mount == {"name": "pod-resources", "mountPath": "/var/lib/kubelet/pod-resources", "readOnly": True}
    assert config.pod_resources_socket.startswith(mount["mountPath"] + "/")  # the socket the program opens
    assert {"name": "pod-resources", "hostPath": {"path": "/var/lib/kubelet/pod-resources",
                                                  "type": "Directory"}} in pod["volumes"]
    service = objects[("Service", "nvdp-nvidia-device-plugin-metrics")]
    assert service["spec"]["ports"] == [{"name": "gpu-metrics", "port": 9101, "targetPort": "gpu-metrics",
                                         "protocol": "TCP"}]
    monitor = objects[("ServiceMonitor", "nvdp-nvidia-device-plugin")]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["gpu-metrics"]
    for obj in objects.values():
        if obj["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    both = render(chart, METRICS_ON | {"devicePlugin": {"metrics": {"enabled": True}, "gpuMetrics": {"enabled": True}}})
    assert [p["name"] for p in container(both, PLUGIN, "nvidia-device-plugin-ctr")["ports"]] == ["metrics",
                                                                                                 "gpu-metrics"]
    assert [p["name"] for p in both[("Service", "nvdp-nvidia-device-plugin-metrics")]["spec"]["ports"]] == [
        "metrics", "gpu-metrics"]


def test_metrics_are_off_by_default_and_a_local_bind_has_no_probes(chart: Any) -> None:
    objects = render(chart, {"gfd": {"enabled": True}})
    assert not [k for k in objects if k[0] in ("Service", "ServiceMonitor")]
    assert "ports" not in container(objects, PLUGIN, "nvidia-device-plugin-ctr")
    local = render(chart, {"devicePlugin": {"metrics": {"enabled": True, "bindAddress": "127.0.0.1"}}})
    c = container(local, PLUGIN, "nvidia-device-plugin-ctr")
    assert env(c)["DP_METRICS_ADDRESS"] == "127.0.0.1:9103" and "livenessProbe" not in c


def test_chart_version_is_ours() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["version"] != "0.20.0" and meta["appVersion"] == meta["version"]
