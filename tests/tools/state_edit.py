#!/usr/bin/env python3
"""Edits a lazyvm state file (docs/SNAPSHOT.md) and re-seals its trailer, so a
test can hand lazyvm a state that is well-formed but says something false.

  state_edit.py STATE zero-bit PAGE     set page PAGE's bit in ZERO_PAGES (41)
  state_edit.py STATE first-data-page MEMORY
                                        print the first page of MEMORY that is
                                        not all zeros and not marked zero
"""
import struct
import sys

SNAP_ZERO_PAGES = 41


def crc32c(data, crc=0):
    table = crc32c.table
    if table is None:
        table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
        crc32c.table = table
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


crc32c.table = None


def sections(buf):
    off = 64
    end = len(buf) - 8
    while off < end:
        typ, idx, length = struct.unpack_from("<IIQ", buf, off)
        yield typ, idx, off + 16, length
        off += 16 + (length + 7) // 8 * 8


def zero_map(buf):
    for typ, _, start, length in sections(buf):
        if typ == SNAP_ZERO_PAGES:
            return start, length
    sys.exit("state file has no ZERO_PAGES section")


def main():
    path, cmd, arg = sys.argv[1:4]
    buf = bytearray(open(path, "rb").read())
    start, length = zero_map(buf)
    if cmd == "first-data-page":
        with open(arg, "rb") as mem:
            page = 0
            while True:
                data = mem.read(4096)
                if not data:
                    sys.exit("no data page")
                marked = buf[start + page // 8] >> (page % 8) & 1
                if not marked and any(data):
                    print(page)
                    return
                page += 1
    if cmd == "zero-bit":
        page = int(arg, 0)
        if page // 8 >= length:
            sys.exit("page beyond the map")
        buf[start + page // 8] |= 1 << (page % 8)
        body = bytes(buf[:-8])
        buf[-8:] = struct.pack("<II", 0x444E455A, crc32c(body))
        open(path, "wb").write(buf)
        return
    sys.exit("unknown command " + cmd)


main()
