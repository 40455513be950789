#!/usr/bin/env python3
"""Cut the WebP images out of Qt resource (.rcc) archives.

Usage: extract_rcc_webp.py OUT_DIR PREFIX FILE.rcc [FILE.rcc ...]

Every `RIFF....WEBP` block is taken (length = little-endian u32 at offset 4,
plus 8). Blocks with the same bytes are written once; images whose width or
height is under 64 px are dropped. Files are named
PREFIX_<first 10 hex digits of sha1>_<W>x<H>.webp.
Standard library only: the size is read from the VP8 / VP8L / VP8X chunk header.
"""
import hashlib
import os
import struct
import sys

MIN_SIDE = 64


def webp_size(blob):
    """Return (width, height) of a WebP file, or None if the header is not understood."""
    if len(blob) < 30 or blob[0:4] != b"RIFF" or blob[8:12] != b"WEBP":
        return None
    chunk = blob[12:16]
    data = blob[20:]
    if chunk == b"VP8X":
        # 1 byte flags, 3 reserved, 24-bit (width-1), 24-bit (height-1)
        w = int.from_bytes(data[4:7], "little") + 1
        h = int.from_bytes(data[7:10], "little") + 1
        return w, h
    if chunk == b"VP8 ":
        # 3-byte frame tag, start code 9d 01 2a, then 14-bit width / height
        if data[3:6] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", data[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        # signature 0x2f, then 14 bits (width-1), 14 bits (height-1)
        if data[0] != 0x2F:
            return None
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def extract(blob):
    """Yield every RIFF....WEBP block in blob."""
    pos = 0
    while True:
        i = blob.find(b"RIFF", pos)
        if i < 0:
            return
        if blob[i + 8:i + 12] == b"WEBP" and i + 8 <= len(blob):
            length = struct.unpack("<I", blob[i + 4:i + 8])[0] + 8
            if i + length <= len(blob):
                yield blob[i:i + length]
                pos = i + length
                continue
        pos = i + 4


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    out_dir, prefix, files = argv[1], argv[2], argv[3:]
    os.makedirs(out_dir, exist_ok=True)
    seen = set()
    written = small = dup = 0
    for path in files:
        with open(path, "rb") as f:
            blob = f.read()
        for img in extract(blob):
            digest = hashlib.sha1(img).hexdigest()
            if digest in seen:
                dup += 1
                continue
            seen.add(digest)
            size = webp_size(img)
            if size is None or min(size) < MIN_SIDE:
                small += 1
                continue
            name = "%s_%s_%dx%d.webp" % (prefix, digest[:10], size[0], size[1])
            with open(os.path.join(out_dir, name), "wb") as f:
                f.write(img)
            written += 1
    print("%s: %d written, %d duplicates, %d under %d px or unreadable"
          % (prefix, written, dup, small, MIN_SIDE), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
