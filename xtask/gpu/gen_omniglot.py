"""Writes a synthetic dataset in Omniglot's layout for the GPU check's training run.

<root>/images_background/<alphabet>/characterNN/<id>_<drawing>.png and the same under
images_evaluation, grayscale PNGs (black ink on white), as the official archives unpack. The engine's
Omniglot loader pools both folders and needs more than 1200 characters (MAML's split: 1100 train,
100 validation, the rest test), so the default is 1300 characters.

Each character is a 4x4 grid of 7-pixel blocks, ink where the bits of a hash of the character are
set (every character differs, and so do its rotations, which the loader adds as classes); each
drawing is shifted by a pixel and has a few pixels flipped. A learner can tell them apart after one
example, so the accuracy after adaptation says whether training worked.

Standard library only (zlib and struct write the PNGs): it runs wherever python3 does.
Usage: python3 gen_omniglot.py ROOT [--characters 1300] [--drawings 4] [--side 28]
"""
import argparse
import os
import struct
import zipfile
import zlib


def png(side, rows):
    raw = b"".join(b"\x00" + bytes(r) for r in rows)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def character(cls, drawing, side):
    h = ((cls + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 29
    bits = (h & 0xFFFF) | 1
    dx, dy = drawing % 2, drawing // 2 % 2
    block = side // 4
    rows = []
    for y in range(side):
        row = []
        for x in range(side):
            bx, by = min((x + dx) // block, 3), min((y + dy) // block, 3)
            ink = (bits >> (by * 4 + bx)) & 1 == 1
            noise = (x * 31 + y * 17 + drawing * 7 + cls) % 23 == 0
            row.append(0 if ink != noise else 255)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--characters", type=int, default=1300)
    ap.add_argument("--drawings", type=int, default=4)
    ap.add_argument("--side", type=int, default=28)
    ap.add_argument("--zip", action="store_true",
                    help="write images_background.zip and images_evaluation.zip (as distributed)")
    a = ap.parse_args()
    os.makedirs(a.root, exist_ok=True)
    zips = {}
    per_alphabet = 20
    for cls in range(a.characters):
        # The first 60% in images_background, the rest in images_evaluation (the real ratio).
        folder = "images_background" if cls < a.characters * 6 // 10 else "images_evaluation"
        rel = f"{folder}/alphabet{cls // per_alphabet:03d}/character{cls % per_alphabet + 1:02d}"
        for drawing in range(a.drawings):
            name = f"{rel}/{cls + 1:04d}_{drawing + 1:02d}.png"
            data = png(a.side, character(cls, drawing, a.side))
            if a.zip:
                if folder not in zips:
                    zips[folder] = zipfile.ZipFile(os.path.join(a.root, folder + ".zip"), "w",
                                                   zipfile.ZIP_DEFLATED)
                zips[folder].writestr(name, data)
            else:
                os.makedirs(os.path.join(a.root, rel), exist_ok=True)
                with open(os.path.join(a.root, name), "wb") as f:
                    f.write(data)
    for z in zips.values():
        z.close()
    print(f"{a.characters} characters x {a.drawings} drawings in {a.root}")


if __name__ == "__main__":
    main()
