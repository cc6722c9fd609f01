"""A PNG contact sheet of duplicate groups, to check the dedupe threshold by eye.

One row per group: a header cell (group id, size, label(s)) then one thumbnail per member, each
captioned with its file name and resolution. The kept member has a green frame and "KEEP"; members
of a label-conflict group have red frames. With no groups, the sheet is a small PNG saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

THUMB = 128
PAD = 6
CAPTION = 30  # two lines of text under each thumbnail
HEADER_W = 150
MAX_PER_ROW = 10
KEEP_COLOUR = (0, 170, 0)
CONFLICT_COLOUR = (210, 0, 0)
FRAME_COLOUR = (170, 170, 170)


def _thumbnail(path: Path, size: int) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return image
    except OSError:  # unreadable file: grey placeholder, the sheet is only a diagnostic
        return Image.new("RGB", (size, size), (128, 128, 128))


def draw_contact_sheet(
    groups: Sequence[Sequence[Mapping[str, Any]]],
    out: Path,
    *,
    resolve: Callable[[str], Path] = Path,
    thumb: int = THUMB,
    max_per_row: int = MAX_PER_ROW,
) -> None:
    """Draw `groups` (rows with path, label, width, height, group, kept) into the PNG `out`."""
    font = ImageFont.load_default()
    cell_w, cell_h = thumb + 2 * PAD, thumb + 2 * PAD + CAPTION
    if not groups:
        sheet = Image.new("RGB", (420, 60), "white")
        ImageDraw.Draw(sheet).text((PAD, PAD), "no duplicate groups found", fill="black", font=font)
        sheet.save(out, format="PNG")
        return
    columns = min(max(len(g) for g in groups), max_per_row)
    sheet = Image.new("RGB", (HEADER_W + columns * cell_w, len(groups) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, group in enumerate(groups):
        top = r * cell_h
        labels = sorted({str(m["label"]) for m in group})
        conflict = len(labels) > 1
        header = [
            f"group {group[0]['group']}",
            f"{len(group)} images",
            "labels: " + ", ".join(labels),
        ]
        if conflict:
            header.append("LABEL CONFLICT")
        if len(group) > max_per_row:
            header.append(f"(+{len(group) - max_per_row} not shown)")
        draw.text(
            (PAD, top + PAD),
            "\n".join(header),
            fill=CONFLICT_COLOUR if conflict else "black",
            font=font,
        )
        shown = sorted(group, key=lambda m: (-int(m["kept"]), str(m["path"])))[:max_per_row]
        for c, member in enumerate(shown):
            left = HEADER_W + c * cell_w
            image = _thumbnail(resolve(str(member["path"])), thumb)
            x = left + PAD + (thumb - image.width) // 2
            y = top + PAD + (thumb - image.height) // 2
            sheet.paste(image, (x, y))
            kept = int(member["kept"]) == 1
            colour = KEEP_COLOUR if kept else CONFLICT_COLOUR if conflict else FRAME_COLOUR
            draw.rectangle(
                (left + 2, top + 2, left + cell_w - 3, top + PAD + thumb + 3),
                outline=colour,
                width=3 if kept or conflict else 1,
            )
            name = Path(str(member["path"])).name
            if len(name) > 22:
                name = name[:9] + "..." + name[-10:]
            caption = f"{name}\n{member['width']}x{member['height']}" + ("  KEEP" if kept else "")
            draw.text((left + PAD, top + PAD + thumb + 4), caption, fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
