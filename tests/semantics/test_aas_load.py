"""Loading AAS environments (JSON, XML, AASX) and locating defects by element path."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from basyx.aas import model

from tidm.semantics.aas import (
    element_path,
    find_child,
    load_environment,
    qualifier_value,
    save_environment,
    semantic_id_of,
    value_text,
)
from tidm.semantics.errors import AasError, SemanticsError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aas"
NAMES = ("pump", "cnc_spindle", "energy_meter")
FORMATS = ("json", "xml", "aasx")


def builders() -> ModuleType:
    name = "tidm_aas_examples"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "build_examples.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_example_loads(name: str, fmt: str) -> None:
    env = load_environment(EXAMPLES / f"{name}.{fmt}")
    shells = env.shells()
    assert len(shells) == 1
    assert str(shells[0].asset_information.global_asset_id).startswith("https://example.com/ids/asset/")
    idshorts = {s.id_short for s in env.submodels()}
    assert {"Nameplate", "AssetInterfacesDescription"} <= idshorts
    for submodel in env.submodels():
        assert env.shell_of(submodel) is shells[0]


@pytest.mark.parametrize("name", NAMES)
def test_formats_hold_the_same_environment(name: str) -> None:
    ids = [sorted(o.id for o in load_environment(EXAMPLES / f"{name}.{fmt}").store) for fmt in FORMATS]
    assert ids[0] == ids[1] == ids[2]


def test_shipped_examples_are_what_the_builder_writes(tmp_path: Path) -> None:
    # The committed files must be regenerated whenever build_examples.py changes.
    assert builders().main([str(tmp_path)]) == 0
    for name in NAMES:
        for fmt in ("json", "xml"):
            assert (tmp_path / f"{name}.{fmt}").read_bytes() == (EXAMPLES / f"{name}.{fmt}").read_bytes(), (
                f"examples/aas/{name}.{fmt} is stale: run python examples/aas/build_examples.py"
            )


def test_format_is_sniffed_without_a_suffix(tmp_path: Path) -> None:
    for fmt in FORMATS:
        target = tmp_path / f"pump-{fmt}.bin"
        shutil.copy(EXAMPLES / f"pump.{fmt}", target)
        assert len(load_environment(target).submodels()) == 4


def test_helpers_read_elements() -> None:
    env = load_environment(EXAMPLES / "pump.json")
    aid = next(s for s in env.submodels() if s.id_short == "AssetInterfacesDescription")
    iface = find_child(aid, "InterfaceOPCUA")
    assert isinstance(iface, model.SubmodelElementCollection)
    assert semantic_id_of(iface) == "https://admin-shell.io/idta/AssetInterfacesDescription/1/0/Interface"
    props = find_child(find_child(iface, "InteractionMetadata") or iface, "properties")
    assert props is not None
    inlet = find_child(props, "InletPressure")
    assert inlet is not None
    assert (
        element_path(inlet)
        == "AssetInterfacesDescription/InterfaceOPCUA/InteractionMetadata/properties/InletPressure"
    )
    assert value_text(find_child(inlet, "unit")) == "bar"
    assert value_text(find_child(inlet, "observable")) == "true"
    assert qualifier_value(inlet, ["TIDM:SamplingInterval"]) == "500.0"
    assert find_child(inlet, "nothing") is None
    security = find_child(find_child(iface, "EndpointMetadata") or iface, "security")
    assert isinstance(security, model.SubmodelElementList)
    assert element_path(next(iter(security.value))) == (
        "AssetInterfacesDescription/InterfaceOPCUA/EndpointMetadata/security[0]"
    )


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AasError, match=r"nope\.json: cannot read AAS file") as info:
        load_environment(tmp_path / "nope.json")
    assert isinstance(info.value, SemanticsError)
    assert info.value.file.endswith("nope.json")


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (".json", b"{ not json", "invalid JSON"),
        (".xml", b"<environment><unclosed></environment>", "invalid XML"),
        (".aasx", b"PK\x03\x04 this is no zip", "not a valid AAS AASX environment"),
        (".json", b'{"submodels": [{"idShort": "X", "modelType": "Property"}]}', "not a valid AAS JSON"),
    ],
)
def test_unreadable_documents_are_clear_errors(
    tmp_path: Path, suffix: str, content: bytes, message: str
) -> None:
    target = tmp_path / f"broken{suffix}"
    target.write_bytes(content)
    with pytest.raises(AasError, match=message) as info:
        load_environment(target)
    assert str(target) in str(info.value)


def _duplicate_inlet_json(source: Path, target: Path) -> None:
    data = json.loads(source.read_text(encoding="utf-8"))
    aid = next(s for s in data["submodels"] if s["idShort"] == "AssetInterfacesDescription")
    iface = next(e for e in aid["submodelElements"] if e["idShort"] == "InterfaceOPCUA")
    interaction = next(e for e in iface["value"] if e["idShort"] == "InteractionMetadata")
    props = next(e for e in interaction["value"] if e["idShort"] == "properties")
    props["value"].append(json.loads(json.dumps(props["value"][0])))
    target.write_text(json.dumps(data), encoding="utf-8")


DUPLICATE_PATH = "AssetInterfacesDescription/InterfaceOPCUA/InteractionMetadata/properties/InletPressure"


def test_duplicate_idshort_in_json_names_the_element(tmp_path: Path) -> None:
    target = tmp_path / "dup.json"
    _duplicate_inlet_json(EXAMPLES / "pump.json", target)
    with pytest.raises(AasError, match="duplicate idShort 'InletPressure'") as info:
        load_environment(target)
    assert info.value.path == DUPLICATE_PATH


def test_duplicate_idshort_in_xml_names_the_element(tmp_path: Path) -> None:
    text = (EXAMPLES / "pump.xml").read_text(encoding="utf-8")
    start = text.index("<aas:submodelElementCollection><aas:idShort>InletPressure<")
    end = text.index("</aas:submodelElementCollection>", text.index("<aas:idShort>forms<", start))
    end = text.index("</aas:submodelElementCollection>", end + 1) + len("</aas:submodelElementCollection>")
    target = tmp_path / "dup.xml"
    target.write_text(text[:end] + text[start:end] + text[end:], encoding="utf-8")
    with pytest.raises(AasError, match="duplicate idShort 'InletPressure'") as info:
        load_environment(target)
    assert info.value.path == DUPLICATE_PATH


def test_duplicate_idshort_in_aasx_names_the_element(tmp_path: Path) -> None:
    data_json = tmp_path / "dup.json"
    _duplicate_inlet_json(EXAMPLES / "pump.json", data_json)
    source = zipfile.ZipFile(EXAMPLES / "pump.aasx")
    target = tmp_path / "dup.aasx"
    with source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith("data.json"):
                content = data_json.read_bytes()
            out.writestr(info, content)
    with pytest.raises(AasError, match="duplicate idShort") as err:
        load_environment(target)
    assert err.value.path == DUPLICATE_PATH


def test_save_environment_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(AasError, match="unknown AAS file type"):
        save_environment([], tmp_path / "x.txt")


def test_submodel_without_shell_is_named(tmp_path: Path) -> None:
    objects = builders().energy_meter()
    orphan = [o for o in objects if not isinstance(o, model.AssetAdministrationShell)]
    save_environment(orphan, tmp_path / "orphan.json")
    env = load_environment(tmp_path / "orphan.json")
    aid = next(s for s in env.submodels() if s.id_short == "AssetInterfacesDescription")
    with pytest.raises(AasError, match="not referenced by any asset administration shell") as info:
        env.shell_of(aid)
    assert info.value.path == "AssetInterfacesDescription"
