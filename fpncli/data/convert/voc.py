"""Pascal VOC -> :class:`~fpncli.data.convert.common.Dataset`.

Layout read (VOC2007 / VOC2012, and what labelImg and CVAT export)::

    SRC/Annotations/<id>.xml        one file per image: <filename>, <size>, <object>s
    SRC/JPEGImages/<filename>       the images
    SRC/ImageSets/Main/<split>.txt  optional: the ids of each split (train, val, trainval, test)

Without ``ImageSets/Main/<split>.txt`` lists, every XML file goes to one split, ``train``.
(Per-class lists such as ``dog_train.txt`` are ignored.)

Coordinates: VOC's ``<bndbox>`` holds 1-based, inclusive pixel indices: the box covers
pixels ``xmin..xmax``, and 1-based pixel ``i`` spans ``[i - 1, i]`` in continuous
coordinates. So the COCO box is::

    x = xmin - 1,  y = ymin - 1,  w = xmax - xmin + 1,  h = ymax - ymin + 1

(Detectron2's VOC loader subtracts 1 from ``xmin``/``ymin`` the same way.) A box with
``xmax < xmin`` or ``ymax < ymin`` is a problem; parts outside the image are clipped.

``difficult`` objects: ``iscrowd`` (the default) keeps them as COCO crowd regions, which
``fpn train`` leaves out of its targets and COCO evaluation ignores, as VOC's evaluation
ignores difficult objects; ``keep`` keeps them as ordinary objects (Detectron2 trains on
them); ``drop`` leaves them out. Either way the COCO annotation carries ``"difficult": 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from fpncli.data.convert.common import Box, Dataset, Item, Problems, Progress, add_box, image_size
from fpncli.data.images import IMAGE_EXTENSIONS
from fpncli.errors import FpnError

DIFFICULT_MODES = ("iscrowd", "keep", "drop")


@dataclass
class _Node:
    """An XML element with the line it starts on (ElementTree keeps no line numbers)."""

    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findtext(self, tag: str) -> str | None:
        node = self.find(tag)
        return None if node is None else node.text.strip()


def parse_xml(path: Path) -> _Node:
    """The XML file as a tree of :class:`_Node`.

    Raises:
        FpnError: ``"<path>:<line>: not valid XML (<reason>)"``.
    """
    parser = expat.ParserCreate()
    stack: list[_Node] = []
    root: list[_Node] = []

    def start(tag: str, attrs: dict) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as exc:
        raise FpnError(f"{path}:{exc.lineno}: not valid XML ({expat.ErrorString(exc.code)})") from None
    except OSError as exc:
        raise FpnError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return root[0]


def _splits(root: Path, problems: Problems) -> dict[str, list[str]]:
    """Split name -> image ids, from ``ImageSets/Main/<split>.txt`` (or one ``train`` split)."""
    lists = sorted((root / "ImageSets" / "Main").glob("*.txt"))
    splits: dict[str, list[str]] = {}
    for path in lists:
        if "_" in path.stem:  # per-class lists: <class>_<split>.txt
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(path, f"cannot read the split list ({exc})")
            continue
        splits[path.stem] = [line.split()[0] for line in lines if line.strip()]
    folder = root / "Annotations"
    # One walk of the folder: .xml or .XML (datasets made on Windows); VOC keeps it flat.
    xmls = [p for p in folder.rglob("*") if p.suffix.lower() == ".xml" and p.is_file()]
    if not splits:
        splits["train"] = sorted(p.stem for p in xmls if p.parent == folder)
    nested = [p for p in xmls if p.parent != folder]
    if nested:
        problems.note(
            "XML files in sub-folders of Annotations/ not read (VOC keeps them in Annotations/)", len(nested)
        )
    return splits


def _xml_path(root: Path, image_id: str) -> Path:
    """Annotations/<id>.xml, or <id>.XML when only that exists."""
    xml = root / "Annotations" / f"{image_id}.xml"
    upper = xml.with_suffix(".XML")
    return upper if not xml.is_file() and upper.is_file() else xml


def _image_path(root: Path, node: _Node, xml: Path) -> Path | None:
    """JPEGImages/<filename>, else JPEGImages/<xml stem>.<any image extension>."""
    images = root / "JPEGImages"
    name = node.findtext("filename") or ""
    safe = name and "/" not in name and "\\" not in name and name not in (".", "..")
    if safe and (images / name).is_file():
        return images / name
    for ext in IMAGE_EXTENSIONS:
        for candidate in (images / (xml.stem + ext), images / (xml.stem + ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def _number(node: _Node, tag: str) -> float | str:
    """The float in ``<tag>``, or a description of what is wrong."""
    text = node.findtext(tag)
    if text is None:
        return f"no <{tag}>"
    try:
        value = float(text)
    except ValueError:
        return f"<{tag}> {text!r} is not a number"
    return value if value == value and abs(value) != float("inf") else f"<{tag}> {text!r} is not finite"


def read_voc(
    root: Path,
    problems: Problems,
    difficult: str = "iscrowd",
    classes: list[str] | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Read a Pascal VOC folder (see the module docstring); bad files and objects go to
    ``problems`` and are skipped. ``classes`` fixes the class names and their order (objects
    of other classes are problems); by default, every name seen, sorted.

    Raises:
        FpnError: no ``Annotations/`` folder, or an unknown ``difficult`` mode.
    """
    if difficult not in DIFFICULT_MODES:
        raise FpnError(f"--difficult: expected one of {', '.join(DIFFICULT_MODES)}, got {difficult!r}")
    if not (root / "Annotations").is_dir():
        raise FpnError(
            f"{root}: not a Pascal VOC folder (no Annotations/; expected Annotations/*.xml and JPEGImages/)"
        )
    splits = _splits(root, problems)
    ids = sorted({i for members in splits.values() for i in members})
    parsed: dict[str, tuple[Item, list[tuple[str, Box, int]]] | None] = {}
    for done, image_id in enumerate(ids, 1):
        parsed[image_id] = _read_one(root, image_id, problems, difficult)
        if progress is not None:
            progress("reading VOC", done, len(ids))
    seen = sorted({name for entry in parsed.values() if entry for name, _, _ in entry[1]})
    names = list(classes) if classes else seen
    index = {name: i for i, name in enumerate(names)}
    out: dict[str, list[Item]] = {}
    for image_id in ids:
        entry = parsed[image_id]
        if entry is None:
            continue
        item, objects = entry
        xml = _xml_path(root, image_id)
        for name, box, line in objects:
            if name not in index:
                problems.add(xml, f"class {name!r} is not in --classes; object skipped", line)
                continue
            box.category = index[name]
            add_box(item, box, problems, xml, line)
    for split, members in splits.items():
        out[split] = [parsed[i][0] for i in members if parsed.get(i) is not None]  # type: ignore[index]
    return Dataset(names, list(range(1, len(names) + 1)), out)


def _read_one(
    root: Path, image_id: str, problems: Problems, difficult: str
) -> tuple[Item, list[tuple[str, Box, int]]] | None:
    """One XML file: the image item (no boxes yet) and its objects ``(class name, box, line)``."""
    xml = _xml_path(root, image_id)
    if not xml.is_file():
        problems.add(xml, "listed in ImageSets/Main but missing; image skipped")
        return None
    try:
        tree = parse_xml(xml)
    except FpnError as exc:
        problems.add(str(exc), "image skipped")
        return None
    path = _image_path(root, tree, xml)
    if path is None:
        name = tree.findtext("filename") or f"{xml.stem}.jpg"
        node = tree.find("filename")
        problems.add(
            xml,
            f"names the image JPEGImages/{name}, which is missing; image skipped",
            node.line if node else None,
        )
        return None
    try:
        width, height = image_size(path)
    except FpnError as exc:
        problems.add(str(exc), "image skipped")
        return None
    size = tree.find("size")
    if size is not None:
        w, h = _number(size, "width"), _number(size, "height")
        if (
            isinstance(w, float)
            and isinstance(h, float)
            and w > 0
            and h > 0
            and (int(w), int(h)) != (width, height)
        ):
            problems.add(
                xml,
                f"<size> says {int(w)}x{int(h)} but the image is {width}x{height}; boxes kept as given, "
                "clipped to the image",
                size.line,
            )
    item = Item(path, path.name, width, height)
    objects: list[tuple[str, Box, int]] = []
    for obj in (c for c in tree.children if c.tag == "object"):
        name = obj.findtext("name") or ""
        bndbox = obj.find("bndbox")
        if not name:
            problems.add(xml, "object without a <name>; skipped", obj.line)
            continue
        if bndbox is None:
            problems.add(xml, f"object {name!r} without a <bndbox>; skipped", obj.line)
            continue
        values = [_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        bad = next((v for v in values if isinstance(v, str)), None)
        if bad is not None:
            problems.add(xml, f"object {name!r}: {bad}; skipped", bndbox.line)
            continue
        xmin, ymin, xmax, ymax = (float(v) for v in values)
        if xmax < xmin or ymax < ymin:
            problems.add(
                xml,
                f"object {name!r}: xmin..xmax {xmin:g}..{xmax:g}, ymin..ymax {ymin:g}..{ymax:g} is an "
                "empty box; skipped",
                bndbox.line,
            )
            continue
        hard = obj.findtext("difficult") in ("1", "true", "True")
        if hard and difficult == "drop":
            problems.note("difficult objects dropped (--difficult drop)")
            continue
        # 1-based inclusive pixel indices -> continuous corners (module docstring).
        box = Box(
            (xmin - 1, ymin - 1, xmax, ymax), -1, iscrowd=hard and difficult == "iscrowd", difficult=hard
        )
        objects.append((name, box, obj.line))
    return item, objects
