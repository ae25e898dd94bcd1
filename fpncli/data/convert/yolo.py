"""YOLO (Ultralytics layout) -> :class:`~fpncli.data.convert.common.Dataset`.

Layout read::

    SRC/data.yaml                 names (a list, or a {index: name} mapping), nc, and the
                                  splits: train/val/test, each a folder (or list of folders)
                                  of images, or a .txt list of image paths, relative to
                                  ``path`` (itself relative to the YAML's folder; default: it)
    SRC/images/<split>/*.jpg      the images (any folder depth)
    SRC/labels/<split>/*.txt      one line per object: ``class cx cy w h``, normalised to [0, 1]

As in Ultralytics, an image's label file is its path with the last ``images`` folder
replaced by ``labels`` and the extension by ``.txt`` (so Roboflow's ``train/images`` +
``train/labels`` layout reads too); an image without a label file has no objects. A line with
more than five numbers is a polygon (segmentation label): its box is the polygon's bounds.
Without split keys in the YAML, every folder under ``images/`` is a split. The YAML is read
with PyYAML (a dependency of fpncli); without a YAML, ``--classes`` or ``SRC/classes.txt``
names the classes.

Image sizes come from the images (header only, EXIF rotation applied), as the normalised
coordinates are fractions of them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fpncli.data.convert.common import Box, Dataset, Item, Problems, Progress, add_box, image_size
from fpncli.data.images import IMAGE_EXTENSIONS
from fpncli.errors import FpnError

SPLIT_KEYS = ("train", "val", "test")
# The YAML key fpn data convert --to yolo adds so that COCO category ids survive a round trip.
CATEGORY_IDS_KEY = "coco_category_ids"


def find_yaml(src: Path) -> Path | None:
    """SRC itself if it is a YAML file; else SRC/data.yaml; else SRC's only *.yaml / *.yml."""
    if src.is_file():
        return src
    if (src / "data.yaml").is_file():
        return src / "data.yaml"
    found = sorted([*src.glob("*.yaml"), *src.glob("*.yml")])
    if len(found) > 1:
        raise FpnError(
            f"{src}: several YAML files ({', '.join(p.name for p in found)}); give the one to read as SRC"
        )
    return found[0] if found else None


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML file as a mapping; a syntax error is one line with its position."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise FpnError(f"{path}{line}: not valid YAML ({exc.problem})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FpnError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise FpnError(f"{path}: expected a mapping with 'names' and the split folders (train, val)")
    return data


def class_names(data: dict[str, Any], path: Path) -> list[str]:
    """``names`` as a list (index = class), from a list or a ``{0: a, 1: b}`` mapping."""
    names = data.get("names")
    if isinstance(names, list):
        out = [str(n) for n in names]
    elif isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise FpnError(f"{path}: 'names' keys must be class indices 0, 1, 2 ...") from None
        if keys != list(range(len(keys))):
            raise FpnError(f"{path}: 'names' keys must be 0..{len(keys) - 1} without gaps, got {keys[:10]}")
        out = [str(names[k] if k in names else names[str(k)]) for k in keys]
    else:
        raise FpnError(f"{path}: no 'names' list (the class names, index 0 first)")
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise FpnError(f"{path}: nc is {nc} but 'names' has {len(out)} classes")
    if not out:
        raise FpnError(f"{path}: 'names' is empty")
    raw = names if isinstance(names, list) else [names[k] if k in names else names[str(k)] for k in keys]
    for index, name in enumerate(raw):
        if name is None or not str(name).strip():
            raise FpnError(f"{path}: class {index} has no name in 'names'")
    first: dict[str, int] = {}
    for index, name in enumerate(out):
        if name in first:
            # Two classes of one name would merge into one COCO category by name downstream.
            raise FpnError(
                f"{path}: class name {name!r} is given twice in 'names' (classes {first[name]} and {index})"
            )
        first[name] = index
    return out


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _split_sources(
    data: dict[str, Any], yaml_path: Path | None, src: Path, problems: Problems
) -> dict[str, list[tuple[Path, Path]]]:
    """Split -> [(image file, folder its output name is relative to)]."""
    base = yaml_path.parent if yaml_path is not None else src
    root = base
    if isinstance(data.get("path"), str) and data["path"]:
        given = Path(data["path"])
        candidate = given if given.is_absolute() else base / given
        root = candidate if candidate.is_dir() else base
    splits: dict[str, list[tuple[Path, Path]]] = {}
    keys = [k for k in SPLIT_KEYS if data.get(k)]
    if not keys:
        folders = (
            sorted(p for p in (root / "images").glob("*") if p.is_dir()) if (root / "images").is_dir() else []
        )
        if folders:
            return {p.name: [(img, p) for img in _images_in(p)] for p in folders}
        if (root / "images").is_dir():
            return {"train": [(img, root / "images") for img in _images_in(root / "images")]}
        raise FpnError(f"{root}: no images/ folder and no train/val folders named in a data.yaml")
    for key in keys:
        entries = data[key] if isinstance(data[key], list) else [data[key]]
        found: list[tuple[Path, Path]] = []
        usable = False
        for entry in entries:
            path = Path(str(entry))
            path = path if path.is_absolute() else root / path
            if not path.exists() and str(entry).startswith("../"):
                path = root / str(entry)[3:]  # Roboflow's "../train/images", as Ultralytics reads it
            usable = usable or path.is_dir() or (path.is_file() and path.suffix == ".txt")
            if path.is_dir():
                found += [(img, path) for img in _images_in(path)]
            elif path.is_file() and path.suffix == ".txt":
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        img = Path(line.strip())
                        img = img if img.is_absolute() else path.parent / img
                        found.append((img, img.parent))
            else:
                problems.add(
                    yaml_path or src,
                    f"{key}: {entry} is not a folder of images or a .txt list; skipped",
                )
        if not usable:
            continue
        # images/train2017 -> split "train2017" (names survive COCO -> YOLO -> COCO); else the key.
        single = Path(str(entries[0])) if len(entries) == 1 else None
        name = single.name if single is not None and single.parent.name == "images" else key
        if name in splits:
            # Two keys naming the same folder (coco128: train and val are both images/train2017):
            # each split is kept, under its YAML key, never one replacing the other.
            name = key
            problems.note(
                f"splits reading the same images as another split (written under their YAML key: {key})"
            )
        splits[name] = found
    return splits


def read_yolo(
    src: Path, problems: Problems, classes: list[str] | None = None, progress: Progress | None = None
) -> Dataset:
    """Read a YOLO folder (see the module docstring); bad label lines and images go to
    ``problems`` and are skipped.

    Raises:
        FpnError: no class names (no YAML, no ``--classes``), a bad YAML, or no images folder.
    """
    if not src.exists():
        raise FpnError(f"{src}: no such folder")
    yaml_path = find_yaml(src)
    data: dict[str, Any] = read_yaml(yaml_path) if yaml_path is not None else {}
    if classes:
        names = list(classes)
    elif yaml_path is not None:
        names = class_names(data, yaml_path)
    elif (src / "classes.txt").is_file():
        names = [
            n.strip() for n in (src / "classes.txt").read_text(encoding="utf-8").splitlines() if n.strip()
        ]
    else:
        raise FpnError(
            f"{src}: no data.yaml (with 'names') and no classes.txt; give the classes with --classes a,b,c"
        )
    ids = data.get(CATEGORY_IDS_KEY)
    if not (
        isinstance(ids, list)
        and len(ids) == len(names)
        and all(isinstance(i, int) for i in ids)
        and len(set(ids)) == len(ids)
    ):
        ids = list(range(1, len(names) + 1))
    sources = _split_sources(data, yaml_path, src if src.is_dir() else src.parent, problems)
    total = sum(len(v) for v in sources.values())
    done = 0
    splits: dict[str, list[Item]] = {}
    for split, images in sources.items():
        items = []
        seen: set[str] = set()
        for image, base in images:
            done += 1
            if progress is not None:
                progress("reading YOLO", done, total)
            name = image.relative_to(base).as_posix() if image.is_relative_to(base) else image.name
            if name in seen:
                problems.add(image, f"a second image named {name} in split {split!r}; skipped")
                continue
            seen.add(name)
            try:
                width, height = image_size(image)
            except FpnError as exc:
                problems.add(str(exc), "image skipped")
                continue
            item = Item(image, name, width, height)
            _read_labels(label_path(image), item, len(names), problems)
            items.append(item)
        splits[split] = items
    _note_orphan_labels(sources, problems)
    return Dataset(names, ids, splits)


def _note_orphan_labels(sources: dict[str, list[tuple[Path, Path]]], problems: Problems) -> None:
    """Count label files that no image of the splits read (a renamed or deleted image): their
    boxes cannot be converted, and a user should hear so rather than lose them unseen."""
    used = {label_path(image) for images in sources.values() for image, _ in images}
    folders = {label_path(base / "x.jpg").parent for images in sources.values() for _, base in images}
    orphans = {
        p
        for folder in folders
        if folder.is_dir() and folder.name != "images"
        for p in folder.rglob("*.txt")
        if p not in used and p.name != "classes.txt"
    }
    if orphans:
        problems.note("label files without an image (not converted)", len(orphans))


def _read_labels(path: Path, item: Item, classes: int, problems: Problems) -> None:
    """Add the boxes of one label file to ``item``; each bad line is one problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.note("images without a label file (no objects)")
        return
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, f"cannot read the label file ({exc}); image kept without objects")
        return
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        box = parse_label_line(fields, classes, item.width, item.height)
        if isinstance(box, str):
            problems.add(path, f"{box}; line skipped", number)
        else:
            add_box(item, box, problems, path, number)


def parse_label_line(fields: list[str], classes: int, width: int, height: int) -> Box | str:
    """One label line -> a box in pixels, or what is wrong with it.

    ``class cx cy w h`` (normalised): ``x1 = (cx - w / 2) * width`` ... ; ``class x1 y1 x2 y2
    x3 y3 ...`` (a polygon, normalised): the polygon's bounds.
    """
    if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
        return f"expected 'class cx cy w h' (5 numbers) or a polygon 'class x1 y1 x2 y2 x3 y3 ...', got {len(fields)} fields"
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        bad = next(v for v in fields if not _is_number(v))
        return f"{bad!r} is not a number"
    if not all(math.isfinite(v) for v in values):
        return "a coordinate is not finite"
    if cls_value != int(cls_value) or not 0 <= cls_value < classes:
        return f"class {fields[0]} is not a class index (0..{classes - 1}, from 'names')"
    for name, value in zip(
        ("cx", "cy", "w", "h") if len(values) == 4 else ("x", "y") * (len(values) // 2), values
    ):
        if not 0.0 <= value <= 1.0:
            return f"{name} {value:g} is outside [0, 1] (coordinates are fractions of the image size)"
    if len(values) == 4:
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            return f"w {w:g} and h {h:g} must be > 0"
        xyxy = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    else:
        xs, ys = values[0::2], values[1::2]
        xyxy = (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height)
    return Box(xyxy, int(cls_value))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
