"""What doctor reads from the host (containerd, CRI-O and Docker configs, the plugin's CDI spec), hostile
(issue 20, item 6): a default runtime with no handler, a handler table that is a string, special files and
symlink loops at the config path, values of the wrong type and documents nested too deeply each give a
verdict with their evidence, never "no configuration" and never an exception; then the parsers fuzzed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfd.config import ConfigError
from gfd.doctor import hostfiles
from gfd.doctor.checks import Check, Context, run
from gfd.doctor.hostfiles import HostFileError

CONTAINERD = "etc/containerd/config.toml"
DOCKER = "etc/docker/daemon.json"
CRIO = "etc/crio/crio.conf.d/99-nvidia.conf"
CDI_SPEC = "var/run/cdi/k8s.device-plugin.nvidia.com-gpu.json"
V2 = '[plugins."io.containerd.grpc.v1.cri".containerd]\n'


def check(root: Path, check_id: str = "runtime.nvidia", **context: Any) -> Check:
    [result] = run(Context(host_root=str(root), **context), [check_id])
    assert not result.evidence.startswith("the check itself failed"), result.evidence
    return result


def place(root: Path, path: str, text: str) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@pytest.mark.parametrize(("path", "text", "evidence"), [
    # containerd would not start its CRI plugin: "no corresponding runtime configured in `containerd.runtimes`".
    (CONTAINERD, V2 + 'default_runtime_name = "nvidia"\n'
     '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\nruntime_type = "io.containerd.runc.v2"\n',
     "containerd's default runtime nvidia has no handler"),
    (CONTAINERD, 'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd]\ndefault_runtime_name = "nvidia"\n',
     "containerd's default runtime nvidia has no handler"),
    (CRIO, '[crio.runtime]\ndefault_runtime = "nvidia"\n', "crio's default runtime nvidia has no handler"),
    (DOCKER, '{"default-runtime": "nvidia"}', "docker's default runtime nvidia has no handler"),
])
def test_a_default_runtime_without_its_handler_fails(tmp_path: Path, path: str, text: str, evidence: str) -> None:
    place(tmp_path, path, text)
    result = check(tmp_path)
    assert result.verdict == "failed" and evidence in result.evidence
    assert "nvidia handler no, default nvidia" in result.evidence
    assert "--set-as-default" in result.remedy


@pytest.mark.parametrize(("path", "text", "evidence"), [
    (CONTAINERD, V2 + 'default_runtime_name = "nvidia"\nruntimes = "nvidia-less"\n',
     'plugins."io.containerd.grpc.v1.cri".containerd.runtimes is a string, not a table'),
    (CONTAINERD, V2 + 'default_runtime_name = "nvidia"\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'
     'nvidia = "yes"\n', 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia is a string, not a table'),
    (CONTAINERD, "plugins = 1\n", "plugins is an integer, not a table"),
    (CONTAINERD, V2 + "default_runtime_name = [1]\n",
     'plugins."io.containerd.grpc.v1.cri".containerd.default_runtime_name is an array, not a string'),
    (CRIO, '[crio]\nruntime = "nvidia"\n', "crio.runtime is a string, not a table"),
    (DOCKER, '{"default-runtime": "nvidia", "runtimes": "nvidia-less"}', "runtimes is a string, not an object"),
    (DOCKER, '["nvidia"]', "the document is an array, not an object"),
    (DOCKER, '{"default-runtime": {"name": "nvidia"}}', "default-runtime is an object, not a string"),
])
def test_a_value_of_the_wrong_type_is_named_by_its_key(tmp_path: Path, path: str, text: str, evidence: str) -> None:
    place(tmp_path, path, text)
    result = check(tmp_path)
    assert result.verdict == "failed" and evidence in result.evidence, result.evidence
    assert "as the evidence says" in result.remedy


@pytest.mark.parametrize("path", [CONTAINERD, DOCKER, CRIO])
@pytest.mark.parametrize(("make", "evidence"), [
    (lambda p: os.symlink(p.name, p), "Too many levels of symbolic links"),  # a loop: the link points at itself
    (os.mkfifo, "not a regular file"),
    (os.mkdir, "not a regular file"),
    (lambda p: os.symlink("/dev/zero", p), "not a regular file"),
    (lambda p: os.symlink("gone", p), "No such file or directory"),
])
def test_what_is_not_a_readable_file_at_a_config_path_is_a_finding_not_no_configuration(
        tmp_path: Path, path: str, make: Any, evidence: str) -> None:
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    make(target)
    result = check(tmp_path)
    assert result.verdict == "failed" and result.evidence.startswith(f"{target}: ") and evidence in result.evidence
    assert "as a regular file" in result.remedy


@pytest.mark.parametrize(("path", "text"), [
    (CONTAINERD, "a = " + "[" * 100_000 + "]" * 100_000 + "\n"),
    (CONTAINERD, "a = " + "{b = " * 100_000 + "1" + "}" * 100_000 + "\n"),
    (DOCKER, '{"runtimes": ' + "[" * 100_000 + "]" * 100_000 + "}"),
])
def test_a_document_nested_100_000_deep_is_one_finding(tmp_path: Path, path: str, text: str) -> None:
    place(tmp_path, path, text)
    result = check(tmp_path)
    assert result.verdict == "failed" and "nested too deeply to parse" in result.evidence


def test_a_cdi_spec_nested_too_deeply_or_of_the_wrong_shape_is_not_a_cdi_spec(tmp_path: Path) -> None:
    spec = place(tmp_path, CDI_SPEC, "[" * 100_000 + "]" * 100_000)
    options = {"cdi": True, "cdi_spec_dir": "/var/run/cdi"}
    assert "is not a CDI spec: not JSON: nested too deeply" in check(tmp_path, "cdi.specs", **options).evidence
    for doc, evidence in (({"kind": "k8s.device-plugin.nvidia.com/gpu", "devices": "all"}, "devices is a string"),
                          ({"kind": "k8s.device-plugin.nvidia.com/gpu", "devices": [{"name": ["0"]}]},
                           "devices[0].name is an array, not a string"),
                          (None, "the document is null, not an object")):
        spec.write_text(json.dumps(doc))
        result = check(tmp_path, "cdi.specs", **options)
        assert result.verdict == "failed" and evidence in result.evidence, result.evidence


# -- fuzz ---------------------------------------------------------------------------------------------------
# Documents shaped like the real ones, any level of which may be replaced by a value of any type.
_SCALARS = st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=8) | st.sampled_from(["nvidia", "runc", ""])
_KEYS = st.sampled_from(["nvidia", "runc", "runtimes", "containerd", "plugins"]) | st.text(max_size=5)


def _junk(null: bool) -> st.SearchStrategy[Any]:
    base = _SCALARS | st.none() if null else _SCALARS
    return st.recursive(base, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
                        max_leaves=6)


def _level(children: dict[str, st.SearchStrategy[Any]], null: bool = False) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional=children) | _junk(null)


def _runtimes(null: bool = False) -> st.SearchStrategy[Any]:
    entry = _level({"runtime_type": _junk(null), "options": _junk(null)}, null)
    return _level({"nvidia": entry, "runc": entry}, null)


_NAME = st.sampled_from(["nvidia", "runc"]) | _junk(False)
_CRI = _level({"containerd": _level({"runtimes": _runtimes(), "default_runtime_name": _NAME})})
_CONTAINERD_DOCS = st.fixed_dictionaries({}, optional={"version": _junk(False), "plugins": _level(
    {"io.containerd.grpc.v1.cri": _CRI, "io.containerd.cri.v1.runtime": _CRI})})
_CRIO_DOCS = st.fixed_dictionaries({}, optional={
    "crio": _level({"runtime": _level({"runtimes": _runtimes(), "default_runtime": _NAME})})})
_DOCKER_DOCS = _level({"runtimes": _runtimes(null=True), "default-runtime": st.sampled_from(["nvidia"]) | _junk(True)},
                      null=True)


def toml(doc: dict[str, Any]) -> str:
    """A document as TOML, every table inline (enough for any shape; tomllib is the reader under test)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(map(value, v)) + "]"
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {value(x)}" for k, x in v.items()) + "}"

    return "".join(f"{json.dumps(k, ensure_ascii=False)} = {value(v)}\n" for k, v in doc.items())


def _at(doc: Any, *keys: str) -> Any:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _fuzzed(path: str, text: str | bytes, check_id: str = "runtime.nvidia", **context: Any) -> Check:
    with tempfile.TemporaryDirectory() as root:
        target = Path(root, path)
        target.parent.mkdir(parents=True)
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
        result = check(Path(root), check_id, **context)
    assert result.verdict in ("ok", "warning", "failed", "skipped") and result.evidence
    assert result.verdict not in ("warning", "failed") or result.remedy
    return result


@settings(max_examples=300, deadline=None)
@given(_CONTAINERD_DOCS)
def test_fuzz_containerd_never_a_false_ok(doc: dict[str, Any]) -> None:
    result = _fuzzed(CONTAINERD, toml(doc))
    assert result.verdict != "ok" or any(
        isinstance(_at(doc, "plugins", plugin, "containerd", "runtimes", "nvidia"), dict)
        and _at(doc, "plugins", plugin, "containerd", "default_runtime_name") == "nvidia"
        for plugin in ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"))


@settings(max_examples=200, deadline=None)
@given(_CRIO_DOCS)
def test_fuzz_crio_never_a_false_ok(doc: dict[str, Any]) -> None:
    result = _fuzzed(CRIO, toml(doc))
    assert result.verdict != "ok" or (isinstance(_at(doc, "crio", "runtime", "runtimes", "nvidia"), dict)
                                      and _at(doc, "crio", "runtime", "default_runtime") == "nvidia")


@settings(max_examples=200, deadline=None)
@given(_DOCKER_DOCS)
def test_fuzz_docker_never_a_false_ok(doc: Any) -> None:
    result = _fuzzed(DOCKER, json.dumps(doc))
    assert result.verdict != "ok" or (isinstance(_at(doc, "runtimes", "nvidia"), dict)
                                      and _at(doc, "default-runtime") == "nvidia")


@settings(max_examples=200, deadline=None)
@given(_level({"kind": st.sampled_from(["k8s.device-plugin.nvidia.com/gpu"]) | _junk(True),
               "devices": st.lists(_level({"name": _junk(True)}, null=True), max_size=3) | _junk(True)}, null=True))
def test_fuzz_cdi_spec_never_a_false_ok(doc: Any) -> None:
    result = _fuzzed(CDI_SPEC, json.dumps(doc), "cdi.specs", cdi=True, cdi_spec_dir="/var/run/cdi")
    assert result.verdict != "ok" or (_at(doc, "kind") == "k8s.device-plugin.nvidia.com/gpu"
                                      and all(isinstance(_at(d, "name"), str) for d in _at(doc, "devices") or []))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([CONTAINERD, CRIO, DOCKER, CDI_SPEC]), st.binary(max_size=200) | st.text(max_size=200))
def test_fuzz_any_bytes_at_any_path_is_a_verdict(path: str, data: bytes | str) -> None:
    _fuzzed(path, data, "cdi.specs" if path == CDI_SPEC else "runtime.nvidia", cdi=True, cdi_spec_dir="/var/run/cdi")


_DIRS = st.lists(st.sampled_from(["/etc/cdi", "/var/run/cdi", "/opt/cdi"]) | _junk(False), max_size=3) | _junk(False)
_CDI_CRI = _level({"enable_cdi": st.booleans() | _junk(False), "cdi_spec_dirs": _DIRS,
                   "containerd": _level({"runtimes": _runtimes()})})
_CONTAINERD_CDI_DOCS = st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([2, 3]) | _junk(False),
    "plugins": _level({"io.containerd.grpc.v1.cri": _CDI_CRI, "io.containerd.cri.v1.runtime": _CDI_CRI})})


@settings(max_examples=300, deadline=None)
@given(_CONTAINERD_CDI_DOCS)
def test_fuzz_containerd_cdi_never_a_false_ok(doc: dict[str, Any]) -> None:
    """ok only when the containerd the config is for injects CDI devices from where the specs are written."""
    result = _fuzzed(CONTAINERD, toml(doc), "runtime.cdi", driver="dra", cdi_spec_dir="/etc/cdi")
    given_version = doc.get("version")
    version: int = given_version if isinstance(given_version, int) else 1
    cri = "io.containerd.cri.v1.runtime" if version >= 3 else "io.containerd.grpc.v1.cri"
    enabled, dirs = _at(doc, "plugins", cri, "enable_cdi"), _at(doc, "plugins", cri, "cdi_spec_dirs")
    assert result.verdict != "ok" or ((enabled is True or (enabled is None and version >= 3))
                                      and (dirs is None or "/etc/cdi" in dirs)), result


def test_each_error_keeps_its_cause(tmp_path: Path) -> None:
    """Review of issue 22: `raise ... from None` with no reason given dropped the cause."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(HostFileError) as unreadable:
        hostfiles.read(str(tmp_path / "fifo"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HostFileError) as bad:
        hostfiles.load_json(str(tmp_path / "bad.json"))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(HostFileError) as deep:
        hostfiles.load_json(str(tmp_path / "deep.json"))
    assert isinstance(unreadable.value.__cause__, ConfigError) and unreadable.value.unreadable
    assert isinstance(bad.value.__cause__, json.JSONDecodeError)
    assert isinstance(deep.value.__cause__, RecursionError)
