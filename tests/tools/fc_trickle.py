#!/usr/bin/env python3
"""Sends a 1024-region Firecracker hand-off to an fc-handler socket in N chunks
(0.5 ms apart), with a memfd where the userfaultfd belongs, and prints the
handler's reply: a peer that trickles its message must still be read whole,
once. Used by tests/integration/fc_versions.sh and docs/BENCHMARKS.md.
Usage: fc_trickle.py SOCKET N"""
import os
import socket
import sys
import time

path, n = sys.argv[1], int(sys.argv[2])
regs = ",".join('{"base_host_virt_addr":%d,"size":4096,"offset":%d,"page_size":4096}'
                % ((1 << 40) + i * 8192, i * 4096) for i in range(1024))
msg = ("[" + regs + "]").encode()
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(path)
fd = os.memfd_create("not-a-userfaultfd")
chunk = len(msg) // n + 1
t0 = time.time()
socket.send_fds(s, [msg[:chunk]], [fd])
for i in range(chunk, len(msg), chunk):
    s.send(msg[i:i + chunk])
    time.sleep(0.0005)
reply = s.recv(400).decode(errors="replace").strip()
print("%d bytes in %d chunks, %.2f s; reply: %s" % (len(msg), n, time.time() - t0, reply))
