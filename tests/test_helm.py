"""The chart through the real Helm engine (helm-python-sdk): every documented mode, values, RBAC, schemas."""

from __future__ import annotations

import os
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
K8S_VERSION = "1.36.0"  # the shared API server's; it knows DeviceClass and ValidatingAdmissionPolicy
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
DRA = "nvdp-nvidia-device-plugin-dra-kubelet-plugin"
DRA_ONLY = {"dra": {"enabled": True}, "devicePlugin": {"enabled": False}, "gfd": {"enabled": True}}
MODES = {
    "plugin only (default)": ({}, {PLUGIN, MPS}),
    "combined": ({"gfd": {"enabled": True}}, {PLUGIN, GFD, MPS}),
    "standalone GFD": ({"gfd": {"enabled": True}, "devicePlugin": {"enabled": False}}, {GFD}),
    "nothing but RBAC (upstream README's standalone command)": ({"devicePlugin": {"enabled": False}}, set()),
    "DRA driver and GFD": (DRA_ONLY, {DRA, GFD}),
    "DRA driver alone": ({"dra": {"enabled": True}, "devicePlugin": {"enabled": False}}, {DRA}),
    "device plugin and DRA driver, split by node label": ({"dra": {"enabled": True}, "gfd": {"enabled": True}},
                                                          {PLUGIN, MPS, GFD, DRA}),
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


# The DRA driver's mode (issue 23 items 5 and 6).
DRA_CTR = "nvidia-dra-plugin-ctr"


def dra_env(objects: dict[tuple[str, str], Any]) -> dict[str, str]:
    return {k: v for k, v in env(container(objects, DRA, DRA_CTR)).items() if isinstance(v, str)}


def test_dra_daemonset_passes_what_nvidias_chart_passes_gpu_kubelet_plugin(chart: Any) -> None:
    """NVIDIA's kubeletplugin.yaml gives gpu-kubelet-plugin these env vars (where ours has the same setting),
    and the plugin's config, loaded from the rendered env alone, finds every directory where the chart mounts
    the host's."""
    from plugin.dra.config import load_dra_config

    objects = render(chart, {**DRA_ONLY, "nvidiaDriverRoot": "/run/nvidia/driver",
                             "cdi": {"nvidiaHookPath": "/usr/local/nvidia/toolkit/nvidia-cdi-hook"},
                             "dra": {"enabled": True, "consumableShares": "memory",
                                     "featureGates": {"ConsumableShares": True, "NVMLDeviceHealthCheck": False}}})
    ctr = container(objects, DRA, DRA_CTR)
    assert ctr["command"] == ["nvidia-dra-plugin"] and ctr["securityContext"] == {"privileged": True}
    assert env(ctr) == {
        "NODE_NAME": {"fieldRef": {"fieldPath": "spec.nodeName"}}, "NVIDIA_DRIVER_ROOT": "/run/nvidia/driver",
        "NVIDIA_VISIBLE_DEVICES": "void", "CDI_ROOT": "/var/run/cdi",
        "KUBELET_REGISTRAR_DIRECTORY_PATH": "/var/lib/kubelet/plugins_registry",
        "KUBELET_PLUGINS_DIRECTORY_PATH": "/var/lib/kubelet/plugins",
        "NVIDIA_CDI_HOOK_PATH": "/usr/local/nvidia/toolkit/nvidia-cdi-hook", "CONSUMABLE_SHARES": "memory",
        "FEATURE_GATES": "ConsumableShares=true,NVMLDeviceHealthCheck=false", "HTTP_ENDPOINT": ":9104",
        "METRICS_PATH": "/metrics"}
    config = load_dra_config([], {**dra_env(objects), "NODE_NAME": "gpu-node-1"})
    assert config.shares.enabled and config.gates["ConsumableShares"] and config.ignored == ()
    pod = objects[("DaemonSet", DRA)]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nvdp-nvidia-device-plugin-dra-service-account"
    host = {v["name"]: v["hostPath"] for v in pod["volumes"]}
    mounted = {m["mountPath"]: host[m["name"]]["path"] for m in ctr["volumeMounts"]}
    # The kubelet's directories at the same paths inside (the registration answer names the socket's host path).
    assert mounted[config.kubelet_registrar_directory_path] == config.kubelet_registrar_directory_path
    assert mounted[config.kubelet_plugins_directory_path] == config.kubelet_plugins_directory_path
    assert host["plugins-registry"]["type"] == host["plugins"]["type"] == "Directory"
    assert mounted[config.cdi_root] == "/var/run/cdi"  # containerd's CDI directory (spec dirs /etc/cdi, /var/run/cdi)
    assert mounted[config.container_driver_root] == config.nvidia_driver_root == "/run/nvidia/driver"
    driver_mount = next(m for m in ctr["volumeMounts"] if m["name"] == "driver-root")
    assert driver_mount["readOnly"] and driver_mount["mountPropagation"] == "HostToContainer"
    assert config.metrics_address == ":9104" and ctr["ports"] == [{"name": "metrics", "containerPort": 9104,
                                                                    "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # Defaults: the host's / is the driver root, as NVIDIA's chart's nvidiaDriverRoot "/".
    defaults = render(chart, DRA_ONLY)
    assert dra_env(defaults)["NVIDIA_DRIVER_ROOT"] == "/" and "FEATURE_GATES" not in dra_env(defaults)
    assert {v["name"]: v.get("hostPath") for v in defaults[("DaemonSet", DRA)]["spec"]["template"]["spec"][
        "volumes"]}["driver-root"] == {"path": "/", "type": "Directory"}


def test_dra_memory_shares_enforced_by_mps_get_the_mps_root_and_shared_memory(chart: Any) -> None:
    """dra.shareEnforcement=mps: the plugin runs the MPS daemons in its container, so it gets mps.root at /mps (where
    its --mps-container-root default looks) and the MPS tmpfs as its /dev/shm, mounted by the device plugin's
    mount-shm init step; the host path goes to --mps-root for the claims' CDI mounts."""
    from plugin.dra.config import load_dra_config

    dra = {"enabled": True, "consumableShares": "memory", "shareEnforcement": "mps",
           "featureGates": {"ConsumableShares": True}}
    values: dict[str, Any] = {**DRA_ONLY, "dra": dra, "mps": {"root": "/run/nvidia/mps"}}
    objects = render(chart, values)
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    config = load_dra_config([], {**dra_env(objects), "NODE_NAME": "gpu-node-1"})
    assert config.shares.enforced and config.mps_root == "/run/nvidia/mps"
    pod = objects[("DaemonSet", DRA)]["spec"]["template"]["spec"]
    host = {v["name"]: v.get("hostPath") for v in pod["volumes"]}
    mounted = {m["mountPath"]: m["name"] for m in container(objects, DRA, DRA_CTR)["volumeMounts"]}
    assert host[mounted[config.mps_container_root]] == {"path": "/run/nvidia/mps", "type": "DirectoryOrCreate"}
    assert host[mounted["/dev/shm"]] == {"path": "/run/nvidia/mps/shm"}
    init = container(objects, DRA, "mps-mounts")
    assert init["command"] == ["mps-control-daemon", "mount-shm"] and init["securityContext"] == {"privileged": True}
    assert init["volumeMounts"] == [{"name": "mps-root", "mountPath": "/mps", "mountPropagation": "Bidirectional"}]
    # An MPS server cannot start in the pod's own PID namespace (NVIDIA's DRA driver and MPS DaemonSet use the host's).
    assert pod["hostPID"] is True and "shareProcessNamespace" not in pod
    own = render(chart, {**values, "mps": {**values["mps"], "enableHostPID": False}})
    assert "hostPID" not in own[("DaemonSet", DRA)]["spec"]["template"]["spec"]
    # Unset (the default), NVIDIA's behaviour: nothing of MPS.
    plain = render(chart, DRA_ONLY)[("DaemonSet", DRA)]["spec"]["template"]["spec"]
    assert "initContainers" not in plain and not {"mps-root", "mps-shm"} & {v["name"] for v in plain["volumes"]}
    assert "hostPID" not in plain
    assert "SHARE_ENFORCEMENT" not in dra_env(render(chart, DRA_ONLY))


def test_gfd_labels_the_memory_shares_the_chart_turns_on(chart: Any) -> None:
    """The chart-wide dra.* sharing values reach GFD too: its labels, from its rendered env alone, say what the
    driver offers (one template gives both their env)."""
    from gfd.labels.compose import compose
    from tests.helpers import simulated_model

    def labels(values: dict[str, Any]) -> dict[str, str]:
        strings = {k: v for k, v in env(container(render(chart, values), GFD, "gpu-feature-discovery-ctr")).items()
                   if isinstance(v, str)}
        config = load_config(parse_command_line(["--oneshot"], strings))
        return {k: v for k, v in compose(simulated_model("dgx-a100"), config, 0).items() if "memory-shares" in k}

    shares = {"enabled": True, "consumableShares": "memory", "featureGates": {"ConsumableShares": True}}
    assert labels({**DRA_ONLY, "dra": {**shares, "shareEnforcement": "mps"}}) == {
        "nvidia.com/gpu.memory-shares": "true", "nvidia.com/gpu.memory-shares.enforced": "true"}
    assert labels({**DRA_ONLY, "dra": shares}) == {
        "nvidia.com/gpu.memory-shares": "true", "nvidia.com/gpu.memory-shares.enforced": "false"}
    assert labels(DRA_ONLY) == {}


def test_dra_per_node_sharing_comes_from_config_manager(chart: Any, tmp_path: Path) -> None:
    """config.map as for the device plugin: config-manager writes the node's config (init) and signals the plugin
    when its label changes (sidecar, one process namespace); the plugin reads flags.dra.* from it. A config may
    turn on enforcement, so the MPS mounts are there; the plugin's account may follow its node's label."""
    from plugin.dra.config import load_dra_config

    shares = ("version: v1\nflags:\n  mpsRoot: /run/nvidia/mps\n  dra:\n    consumableShares: memory\n"
              "    shareEnforcement: mps\n    featureGates: [ConsumableShares=true]\n")
    objects = render(chart, {**DRA_ONLY, "config": {"map": {"shares": shares, "whole": "version: v1\n"},
                                                    "default": "whole"}})
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = objects[("DaemonSet", DRA)]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and "shareProcessNamespace" not in pod  # the sidecar finds it among the host's
    assert [c["name"] for c in pod["initContainers"]] == ["mps-mounts", "nvidia-dra-plugin-init"]
    sidecar = container(objects, DRA, "nvidia-dra-plugin-sidecar")
    assert env(sidecar)["PROCESS_TO_SIGNAL"] == "nvidia-dra-plugin" and env(sidecar)["SIGNAL"] == "1"
    plugin_env = dra_env(objects)
    assert plugin_env["CONFIG_FILE"] == "/config/config.yaml" and "SHARE_ENFORCEMENT" not in plugin_env
    written = tmp_path / "config.yaml"
    written.write_text(objects[("ConfigMap", "nvdp-nvidia-device-plugin-configs")]["data"]["shares"])
    config = load_dra_config([], {**plugin_env, "CONFIG_FILE": str(written), "NODE_NAME": "gpu-node-1"})
    assert config.shares.enforced and config.mps_root == "/run/nvidia/mps"
    assert rules(objects, "ClusterRole", "nvdp-nvidia-device-plugin-dra")[-1] == (
        ("",), ("nodes",), ("get", "list", "watch"))


def node_requirements(objects: dict[tuple[str, str], Any], daemonset: str) -> list[list[dict[str, Any]]]:
    """Each node selector term's match expressions (terms are OR-ed)."""
    affinity = objects[("DaemonSet", daemonset)]["spec"]["template"]["spec"]["affinity"]
    return [t.get("matchExpressions", []) for t in
            affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]]


LABEL = "nvidia.com/gpu.deploy.dra-driver"
UPSTREAM_TERMS = [t["matchExpressions"] for t in
                  UPSTREAM_AFFINITY["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                      "nodeSelectorTerms"]]


def test_one_driver_per_node_the_label_splits_the_nodes(chart: Any) -> None:
    """Both drivers on: every term of the DRA driver's affinity needs the label `true`, every term of the
    device plugin's and its MPS daemon's excludes it; GFD keeps labelling every GPU node. (The real scheduler
    places them so in tests/test_helm_dra_cluster.py.)"""
    objects = render(chart, {"dra": {"enabled": True}, "gfd": {"enabled": True}})
    dra_only = {"key": LABEL, "operator": "In", "values": ["true"]}
    not_dra = {"key": LABEL, "operator": "NotIn", "values": ["true"]}
    assert node_requirements(objects, DRA) == [[*term, dra_only] for term in UPSTREAM_TERMS]
    for daemonset in (PLUGIN, MPS):
        assert node_requirements(objects, daemonset) == [[*term, not_dra] for term in UPSTREAM_TERMS]
    assert objects[("DaemonSet", GFD)]["spec"]["template"]["spec"]["affinity"] == UPSTREAM_AFFINITY
    # Without DRA nothing changes for upstream's values.
    assert render(chart)[("DaemonSet", PLUGIN)]["spec"]["template"]["spec"]["affinity"] == UPSTREAM_AFFINITY
    # The DRA driver alone: every GPU node but those labelled `false` (the GPU Operator's opt-out).
    alone = render(chart, DRA_ONLY)
    assert node_requirements(alone, DRA) == [[*term, {"key": LABEL, "operator": "NotIn", "values": ["false"]}]
                                             for term in UPSTREAM_TERMS]
    # An affinity of the operator's own, and none at all.
    by_name = [{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": by_name}]}}, "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    mine = render(chart, {"dra": {"enabled": True, "nodeLabel": "example.com/dra"}, "affinity": own})
    terms = mine[("DaemonSet", DRA)]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": by_name, "matchExpressions": [{**dra_only, "key": "example.com/dra"}]}]
    assert "podAntiAffinity" in mine[("DaemonSet", DRA)]["spec"]["template"]["spec"]["affinity"]
    bare = render(chart, {"dra": {"enabled": True}, "affinity": None})
    assert node_requirements(bare, DRA) == [[dra_only]] and node_requirements(bare, PLUGIN) == [[not_dra]]
    for obj in (*mine.values(), *bare.values()):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_both_drivers_without_a_label_to_split_them_is_refused(chart: Any) -> None:
    with pytest.raises(helm_python.HelmRenderError) as e:
        render(chart, {"dra": {"enabled": True, "nodeLabel": ""}})
    assert "'dra.enabled' and 'devicePlugin.enabled' are both true and 'dra.nodeLabel' is empty: both drivers " \
           "would serve the same GPUs." in str(e.value)
    render(chart, {"dra": {"enabled": True, "nodeLabel": ""}, "devicePlugin": {"enabled": False}})  # one driver


def test_device_classes_are_nvidias_and_map_the_extended_resource(chart: Any) -> None:
    objects = render(chart, DRA_ONLY)
    gpu, mig = objects[("DeviceClass", "gpu.nvidia.com")], objects[("DeviceClass", "mig.nvidia.com")]
    assert gpu["spec"] == {"selectors": [{"cel": {"expression": "device.driver == 'gpu.nvidia.com' && "
                                                                "device.attributes['gpu.nvidia.com'].type == 'gpu'"}}],
                           "extendedResourceName": "nvidia.com/gpu"}
    assert mig["spec"] == {"selectors": [{"cel": {"expression": "device.driver == 'gpu.nvidia.com' && "
                                                                "device.attributes['gpu.nvidia.com'].type == 'mig'"}}]}
    assert "metadata" in gpu and "namespace" not in gpu["metadata"]  # cluster-scoped
    unmapped = render(chart, {**DRA_ONLY, "dra": {"enabled": True, "extendedResourceName": ""}})
    assert "extendedResourceName" not in unmapped[("DeviceClass", "gpu.nvidia.com")]["spec"]
    assert not [k for k in render(chart, {**DRA_ONLY, "dra": {"enabled": True, "deviceClasses": False}})
                if k[0] == "DeviceClass"]
    assert not [k for k in render(chart) if k[0] == "DeviceClass"]


def test_dra_rbac_is_its_own_and_least_privilege(chart: Any) -> None:
    objects = render(chart, {"dra": {"enabled": True}, "gfd": {"enabled": True}})
    account = "nvdp-nvidia-device-plugin-dra-service-account"
    assert objects[("ServiceAccount", account)]["metadata"]["namespace"] == NS
    assert rules(objects, "ClusterRole", "nvdp-nvidia-device-plugin-dra") == [
        (("resource.k8s.io",), ("resourceslices",), ("list", "watch", "create", "update", "delete")),
        (("resource.k8s.io",), ("resourceclaims",), ("get", "list", "watch")),
        (("resource.k8s.io",), ("deviceclasses",), ("get",)),
        (("",), ("nodes",), ("get",))]
    binding = objects[("ClusterRoleBinding", "nvdp-nvidia-device-plugin-dra")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NS}]
    # The other programs keep their own account, which gets nothing of this.
    for daemonset in (PLUGIN, GFD):
        assert objects[("DaemonSet", daemonset)]["spec"]["template"]["spec"]["serviceAccountName"] == \
            "nvdp-nvidia-device-plugin-service-account"
    policy = objects[("ValidatingAdmissionPolicy", "nvdp-nvidia-device-plugin-dra-own-node-slices")]
    assert policy["spec"]["matchConditions"] == [{"name": "the-dra-driver", "expression": (
        f'request.userInfo.username == "system:serviceaccount:{NS}:{account}"')}]
    assert objects[("ValidatingAdmissionPolicyBinding", "nvdp-nvidia-device-plugin-dra-own-node-slices")]["spec"] == {
        "policyName": "nvdp-nvidia-device-plugin-dra-own-node-slices", "validationActions": ["Deny"]}
    assert not [k for k in render(chart) if "dra" in k[1]]


def test_dra_metrics_service_monitor_and_gpu_telemetry(chart: Any) -> None:
    from plugin.telemetry.cli import OPTIONS

    objects = render(chart, {**DRA_ONLY, "dra": {"enabled": True, "gpuMetrics": {"enabled": True}},
                             "serviceMonitor": {"enabled": True}})
    service = objects[("Service", "nvdp-nvidia-device-plugin-metrics")]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("metrics", 9102), ("gpu-metrics", 9101)]
    pod = objects[("DaemonSet", DRA)]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    monitor = objects[("ServiceMonitor", "nvdp-nvidia-device-plugin")]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics", "gpu-metrics"]
    exporter = container(objects, DRA, "gpu-metrics-exporter-ctr")
    assert exporter["command"] == ["gpu-metrics-exporter"]
    assert pod["spec"]["hostPID"] is True  # NVML names processes by the host's PIDs; the exporter maps them to pods
    assert exporter["ports"] == [{"name": "gpu-metrics", "containerPort": 9101, "protocol": "TCP"}]
    # The exporter's config from the rendered env: its address, and the pod-resources socket, driver root, the DRA
    # driver's checkpoint directory and the processes where the chart mounts the host's (read-only).
    from gfd.config.loader import load, parse_command_line
    from plugin.dra.config import load_dra_config
    from plugin.telemetry.cli import ExporterConfig

    strings = {k: v for k, v in env(exporter).items() if isinstance(v, str)}
    config = load(parse_command_line([], strings, OPTIONS, "gpu-metrics-exporter"), OPTIONS, ExporterConfig)
    mounts = {m["mountPath"]: m for m in exporter["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert config.gpu_metrics_address == ":9101"
    assert mounts[os.path.dirname(config.pod_resources_socket)]["name"] == "pod-resources"
    assert mounts[config.container_driver_root]["name"] == "driver-root"
    driver = load_dra_config([], dra_env(objects) | {"NODE_NAME": "node-1"})
    plugins = mounts[os.path.dirname(config.dra_checkpoint_dir)]
    assert config.dra_checkpoint_dir == driver.plugin_dir and plugins["name"] == "plugins" and plugins["readOnly"]
    proc = mounts[config.proc_root]
    assert volumes[proc["name"]]["hostPath"]["path"] == "/proc" and proc["readOnly"]
    off = render(chart, {**DRA_ONLY, "dra": {"enabled": True, "metrics": {"enabled": False}}})
    assert not [k for k in off if k[0] == "Service"] and "ports" not in container(off, DRA, DRA_CTR)
    assert "HTTP_ENDPOINT" not in dra_env(off)


@pytest.mark.parametrize(("values", "message"), [
    ({"dra": {"consumableShares": "half"}}, "at '/dra/consumableShares'"),
    ({"dra": {"featureGates": {"ConsumableShares": "yes"}}}, "at '/dra/featureGates/ConsumableShares'"),
    ({"dra": {"extendedResourceName": "gpu"}}, "at '/dra/extendedResourceName'"),
    ({"dra": {"enable": True}}, "additional properties 'enable' not allowed"),
    ({"dra": {"shareEnforcement": "hami"}}, "at '/dra/shareEnforcement'"),
])
def test_schema_rejects_mistyped_dra_values(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message):
        render(chart, values)
