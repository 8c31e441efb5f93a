#!/usr/bin/env python3
"""Edits a lazyvm state file (docs/SNAPSHOT.md) and re-seals its trailer, so a
test can hand lazyvm a state that is well-formed but says something false.

  state_edit.py STATE zero-bit PAGE     set page PAGE's bit in ZERO_PAGES (41)
  state_edit.py STATE first-data-page MEMORY
                                        print the first page of MEMORY that is
                                        not all zeros and not marked zero
  state_edit.py STATE version N         make the header say format version N
                                        (an honest old-format file: the rest is
                                        what this lazyvm wrote, the trailer sealed)
  state_edit.py STATE set-u32 TYPE INDEX OFFSET VALUE
                                        the u32 at OFFSET of section TYPE/INDEX
  state_edit.py STATE and-u32 TYPE INDEX OFFSET MASK
                                        the same u32 ANDed with MASK
  state_edit.py STATE add-section TYPE INDEX LEN
                                        append a zero-filled section
  state_edit.py STATE set-msr VCPU MSR VALUE
                                        the MSR's value in vCPU VCPU's MSRS (15)
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


def seal(path, buf):
    body = bytes(buf[:-8])
    buf[-8:] = struct.pack("<II", 0x444E455A, crc32c(body))
    open(path, "wb").write(buf)


def edit(path, buf, cmd, args):
    if cmd == "version":
        struct.pack_into("<I", buf, 8, int(args[0], 0))
    elif cmd in ("set-u32", "and-u32"):
        typ, idx, off, val = (int(a, 0) for a in args[:4])
        for t, i, start, length in sections(buf):
            if (t, i) == (typ, idx):
                if off + 4 > length:
                    sys.exit("offset beyond the section")
                if cmd == "and-u32":
                    val &= struct.unpack_from("<I", buf, start + off)[0]
                struct.pack_into("<I", buf, start + off, val)
                break
        else:
            sys.exit("no section %d/%d" % (typ, idx))
    elif cmd == "add-section":
        typ, idx, length = (int(a, 0) for a in args[:3])
        sec = struct.pack("<IIQ", typ, idx, length) + bytes((length + 7) // 8 * 8)
        buf[-8:-8] = sec
    elif cmd == "set-msr":
        vcpu, index, val = (int(a, 0) for a in args[:3])
        for t, i, start, length in sections(buf):
            if (t, i) == (15, vcpu):
                for off in range(start, start + length, 16):
                    if struct.unpack_from("<I", buf, off)[0] == index:
                        struct.pack_into("<Q", buf, off + 8, val)
                        break
                else:
                    sys.exit("vCPU %d has no MSR 0x%x" % (vcpu, index))
                break
        else:
            sys.exit("no MSRS section for vCPU %d" % vcpu)
    else:
        return False
    seal(path, buf)
    return True


def main():
    path, cmd, arg = sys.argv[1:4]
    buf = bytearray(open(path, "rb").read())
    if edit(path, buf, cmd, sys.argv[3:]):
        return
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
        seal(path, buf)
        return
    sys.exit("unknown command " + cmd)


main()
