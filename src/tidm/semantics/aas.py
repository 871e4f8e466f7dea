"""Load Asset Administration Shell environments (JSON, XML, AASX) with basyx-python-sdk.

Errors name the file and, where the problem sits inside the environment, the element path as
slash-separated idShorts starting at the submodel (`AssetInterfacesDescription/InterfaceMQTT/...`),
with `[i]` for the position in a SubmodelElementList. basyx reports a defect deep in a document with
little context, so when it refuses a file we scan the raw JSON/XML ourselves to say where.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidm.errors import MissingExtraError
from tidm.semantics.errors import AasError

try:
    from basyx.aas import model
    from basyx.aas.adapter import aasx
    from basyx.aas.adapter import json as aas_json
    from basyx.aas.adapter import xml as aas_xml
    from basyx.aas.model.concept import ConceptDescription
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError(extra="aas", module="basyx-python-sdk") from exc

__all__ = [
    "AasEnvironment",
    "element_path",
    "find_child",
    "load_environment",
    "qualifier_value",
    "reference_keys",
    "save_environment",
    "semantic_id_of",
    "supplemental_ids_of",
    "value_text",
]

_FORMATS = ("json", "xml", "aasx")


@dataclass(frozen=True)
class AasEnvironment:
    """The identifiables of one AAS file, and the file's name for error messages."""

    source: str
    store: model.DictIdentifiableStore[model.Identifiable]

    def shells(self) -> list[model.AssetAdministrationShell]:
        """The shells, in id order (so every listing derived from them is stable)."""
        found = [o for o in self.store if isinstance(o, model.AssetAdministrationShell)]
        return sorted(found, key=lambda s: s.id)

    def submodels(self) -> list[model.Submodel]:
        """The submodels, in id order."""
        found = [o for o in self.store if isinstance(o, model.Submodel)]
        return sorted(found, key=lambda s: s.id)

    def concept_description(self, identifier: str) -> ConceptDescription | None:
        """The concept description with this id, if the environment carries it."""
        try:
            found = self.store.get_item(identifier)
        except KeyError:
            return None
        return found if isinstance(found, ConceptDescription) else None

    def shell_of(self, submodel: model.Submodel) -> model.AssetAdministrationShell:
        """The one shell that references `submodel`; errors if none or several do."""
        owners = [
            shell
            for shell in self.shells()
            if any(ref.get_identifier() == submodel.id for ref in shell.submodel)
        ]
        path = submodel.id_short or submodel.id
        if not owners:
            msg = f"submodel {submodel.id!r} is not referenced by any asset administration shell"
            raise AasError(msg, file=self.source, path=path)
        if len(owners) > 1:
            ids = ", ".join(repr(s.id) for s in owners)
            msg = f"submodel {submodel.id!r} is referenced by several shells ({ids}); its asset is ambiguous"
            raise AasError(msg, file=self.source, path=path)
        return owners[0]

    def resolve(self, reference: model.Reference, *, at: str) -> model.Referable:
        """Follow a model reference inside this environment; errors name `at` (the referring element)."""
        if not isinstance(reference, model.ModelReference):
            msg = "expected a ModelReference into this environment, got an ExternalReference"
            raise AasError(msg, file=self.source, path=at)
        try:
            found = reference.resolve(self.store)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            keys = "/".join(reference_keys(reference))
            msg = f"reference {keys!r} does not resolve in this environment ({exc})"
            raise AasError(msg, file=self.source, path=at) from exc
        if not isinstance(found, model.Referable):  # pragma: no cover - resolve() returns referables
            msg = "reference does not point to a referable element"
            raise AasError(msg, file=self.source, path=at)
        return found


def element_path(element: model.Referable) -> str:
    """`Submodel/Collection/List[2]/Element`: where an element sits, for error messages."""
    parts: list[str] = []
    item: Any = element
    while item is not None:
        parent = getattr(item, "parent", None)
        if isinstance(item, model.Identifiable):
            parts.append(item.id_short or item.id)
            break
        if isinstance(parent, model.SubmodelElementList):
            index = list(parent.value).index(item)
            parts.append(f"[{index}]")
        else:
            parts.append(str(item.id_short))
        item = parent
    text = ""
    for part in reversed(parts):
        text += part if part.startswith("[") or not text else f"/{part}"
    return text


def semantic_id_of(element: model.HasSemantics | model.Reference | None) -> str | None:
    """The value of the first key of an element's semanticId (or of a reference)."""
    ref = element if isinstance(element, model.Reference) or element is None else element.semantic_id
    if ref is None or not ref.key:
        return None
    return str(ref.key[0].value)


def supplemental_ids_of(element: model.HasSemantics) -> tuple[str, ...]:
    """The first-key values of an element's supplemental semantic ids."""
    return tuple(str(r.key[0].value) for r in element.supplemental_semantic_id if r.key)


def reference_keys(reference: model.Reference) -> list[str]:
    """The key values of a reference, in order."""
    return [str(k.value) for k in reference.key]


def find_child(element: model.Referable, id_short: str) -> model.SubmodelElement | None:
    """The direct child with this idShort of a submodel or collection, or None."""
    children: Iterable[model.SubmodelElement]
    if isinstance(element, model.Submodel):
        children = element.submodel_element
    elif isinstance(element, model.SubmodelElementCollection | model.SubmodelElementList):
        children = element.value
    else:
        return None
    for child in children:
        if child.id_short == id_short:
            return child
    return None


def value_text(element: model.SubmodelElement | None) -> str | None:
    """The value of a Property as text (None for absent elements, empty values or other kinds)."""
    if not isinstance(element, model.Property) or element.value is None:
        return None
    value = element.value
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None


def qualifier_value(element: model.Referable, names: Iterable[str]) -> str | None:
    """The value of the first qualifier (by type) or extension (by name) of `element` in `names`."""
    wanted = {n.lower() for n in names}
    if isinstance(element, model.Qualifiable):
        for qualifier in element.qualifier:
            if qualifier.type.lower() in wanted and qualifier.value is not None:
                return str(qualifier.value)
    for extension in element.extension:
        if extension.name.lower() in wanted and extension.value is not None:
            return str(extension.value)
    return None


def _format_of(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in _FORMATS:
        return suffix
    if head.startswith(b"PK"):
        return "aasx"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<"):
        return "xml"
    return "json"


def load_environment(path: Path | str) -> AasEnvironment:
    """Read an AAS environment from a .json, .xml or .aasx file (format sniffed for other names)."""
    file = Path(path)
    source = str(path)
    try:
        with file.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        msg = f"cannot read AAS file: {exc.strerror or exc}"
        raise AasError(msg, file=source) from exc
    kind = _format_of(file, head)
    try:
        store = _read(file, kind)
    except AasError:
        raise
    except Exception as exc:  # basyx raises many types; each means "this file is defective"
        _raise_located(file, kind, source, exc)
    return AasEnvironment(source=source, store=store)


def _read(file: Path, kind: str) -> model.DictIdentifiableStore[model.Identifiable]:
    if kind == "json":
        return aas_json.read_aas_json_file(file, failsafe=False)
    if kind == "xml":
        return aas_xml.read_aas_xml_file(file, failsafe=False)
    store: model.DictIdentifiableStore[model.Identifiable] = model.DictIdentifiableStore()
    files = aasx.DictSupplementaryFileContainer()  # type: ignore[no-untyped-call]
    with aasx.AASXReader(file, failsafe=False) as reader:
        reader.read_into(store, files)
    return store


def _raise_located(file: Path, kind: str, source: str, exc: Exception) -> None:
    """Re-raise a basyx failure as AasError, located by our own scan of the raw document if we can."""
    located: tuple[str, str] | None = None
    try:
        for raw_kind, raw in _raw_parts(file, kind):
            located = _scan_json(raw) if raw_kind == "json" else _scan_xml(raw)
            if located is not None:
                break
    except (OSError, ValueError, zipfile.BadZipFile):
        located = None
    if located is not None:
        path, message = located
        raise AasError(message, file=source, path=path) from exc
    detail = str(exc).split(" >>> ", 1)[0]
    msg = f"not a valid AAS {kind.upper()} environment: {type(exc).__name__}: {detail}"
    raise AasError(msg, file=source) from exc


def _raw_parts(file: Path, kind: str) -> Iterator[tuple[str, bytes]]:
    if kind != "aasx":
        yield kind, file.read_bytes()
        return
    with zipfile.ZipFile(file) as package:
        for name in package.namelist():
            lower = name.lower()
            if lower.endswith(".json") and "aasx" in lower:
                yield "json", package.read(name)
            elif lower.endswith(".xml") and "aasx" in lower and "_rels" not in lower:
                yield "xml", package.read(name)


def _scan_json(raw: bytes) -> tuple[str, str] | None:
    """Find the first duplicated or missing idShort in a JSON environment."""
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return "", f"invalid JSON: {exc}"
    if not isinstance(data, dict):
        return "", "invalid JSON: the top level must be an object"
    for submodel in data.get("submodels") or []:
        if not isinstance(submodel, dict):
            continue
        name = str(submodel.get("idShort") or submodel.get("id") or "?")
        found = _scan_json_children(name, submodel.get("submodelElements"), listed=False)
        if found is not None:
            return found
    return None


def _scan_json_children(path: str, children: Any, *, listed: bool) -> tuple[str, str] | None:
    if not isinstance(children, list):
        return None
    seen: set[str] = set()
    for index, child in enumerate(children):
        if not isinstance(child, dict):
            continue
        id_short = child.get("idShort")
        here = f"{path}[{index}]" if listed else f"{path}/{id_short}"
        if not listed:
            if not id_short:
                return f"{path}[{index}]", "submodel element without idShort"
            if id_short in seen:
                return here, f"duplicate idShort {id_short!r} in {path}"
            seen.add(id_short)
        kind = child.get("modelType")
        nested = child.get("value") if kind in ("SubmodelElementCollection", "SubmodelElementList") else None
        is_list = kind == "SubmodelElementList"
        found = _scan_json_children(here, nested, listed=is_list)
        if found is not None:
            return found
    return None


def _scan_xml(raw: bytes) -> tuple[str, str] | None:
    """Find the first duplicated idShort in an XML environment (namespace-agnostic)."""
    # The document already failed to parse in basyx (lxml); parse it again only to locate the
    # defect, with entity resolution and network access off.
    from lxml import etree  # type: ignore[import-untyped,unused-ignore]

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(raw, parser)  # noqa: S320 - hardened parser above
    except etree.XMLSyntaxError as exc:
        return "", f"invalid XML: {exc}"
    for submodel in _xml_children(root, "submodels", "submodel"):
        name = _xml_text(submodel, "idShort") or _xml_text(submodel, "id") or "?"
        elements = _xml_child(submodel, "submodelElements")
        found = _scan_xml_children(name, elements, listed=False)
        if found is not None:
            return found
    return None


def _local(tag: Any) -> str:
    return str(tag).rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _xml_child(node: Any, name: str) -> Any:
    if node is None:
        return None
    for child in node:
        if _local(child.tag) == name:
            return child
    return None


def _xml_text(node: Any, name: str) -> str | None:
    child = _xml_child(node, name)
    return child.text.strip() if child is not None and child.text else None


def _xml_children(root: Any, container: str, item: str) -> list[Any]:
    holder = _xml_child(root, container)
    return [c for c in holder if _local(c.tag) == item] if holder is not None else []


def _scan_xml_children(path: str, container: Any, *, listed: bool) -> tuple[str, str] | None:
    if container is None:
        return None
    seen: set[str] = set()
    elements = [c for c in container if _local(c.tag)]
    for index, child in enumerate(elements):
        id_short = _xml_text(child, "idShort")
        here = f"{path}[{index}]" if listed else f"{path}/{id_short}"
        if not listed:
            if not id_short:
                return f"{path}[{index}]", "submodel element without idShort"
            if id_short in seen:
                return here, f"duplicate idShort {id_short!r} in {path}"
            seen.add(id_short)
        kind = _local(child.tag)
        if kind in ("submodelElementCollection", "submodelElementList"):
            found = _scan_xml_children(here, _xml_child(child, "value"), listed=kind == "submodelElementList")
            if found is not None:
                return found
    return None


def save_environment(
    objects: Iterable[model.Identifiable], path: Path | str, *, aasx_json: bool = True
) -> None:
    """Write identifiables to .json, .xml or .aasx (by suffix); AASX packages every shell given."""
    file = Path(path)
    store: model.DictIdentifiableStore[model.Identifiable] = model.DictIdentifiableStore(objects)
    kind = file.suffix.lower().lstrip(".")
    if kind == "json":
        text = io.StringIO()
        aas_json.write_aas_json_file(text, store, indent=2, sort_keys=False)
        file.write_text(text.getvalue() + "\n", encoding="utf-8")
    elif kind == "xml":
        with file.open("wb") as fh:
            aas_xml.write_aas_xml_file(fh, store)
    elif kind == "aasx":
        shells = sorted(o.id for o in store if isinstance(o, model.AssetAdministrationShell))
        files = aasx.DictSupplementaryFileContainer()  # type: ignore[no-untyped-call]
        with aasx.AASXWriter(file, failsafe=False) as writer:
            writer.write_aas(shells, store, files, write_json=aasx_json)
    else:
        msg = "unknown AAS file type (expected .json, .xml or .aasx)"
        raise AasError(msg, file=str(path))
