#!/usr/bin/env python3
"""A mail server's maildir traffic (the workload o2fs was made for), for bench/cluster.sh.

maildir.py ROOT TAG N USERS delivers N messages into the maildirs ROOT/uNN of USERS users,
as an MTA's local delivery agent does: each message is written to tmp/ under a unique name,
fsynced, and renamed into new/. After every tenth delivery an IMAP/POP session of a random user
reads every message in its new/ and moves it to cur/ with the seen flag (":2,S"). Several
processes (on several nodes) may run at once on the same ROOT with different TAGs: a message
another session moved first is skipped. Sizes follow a mail-like mix (most a few KiB, some
hundreds); the choices are seeded by TAG. Prints "delivered N read M" when done; exits 1 on
any other error.
"""
import os
import random
import sys

SIZES = [(1500, 30), (4000, 30), (10000, 20), (40000, 12), (150000, 6), (600000, 2)]


def maildir(root, user):
    d = os.path.join(root, "u%02d" % user)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    return d


def deliver(d, name, body):
    tmp = os.path.join(d, "tmp", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(d, "new", name))


def session(d):
    """Reads every new message and marks it seen; returns how many it read."""
    n = 0
    for name in sorted(os.listdir(os.path.join(d, "new"))):
        src = os.path.join(d, "new", name)
        try:
            with open(src, "rb") as f:
                data = f.read()
            os.rename(src, os.path.join(d, "cur", name + ":2,S"))
        except FileNotFoundError:
            continue  # another session (maybe on the other node) took it first
        if not data.startswith(b"Return-Path:"):
            raise RuntimeError("%s: not a message: %r" % (src, data[:40]))
        n += 1
    return n


def main():
    root, tag, n, users = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(tag)
    dirs = [maildir(root, u) for u in range(users)]
    sizes, weights = zip(*SIZES)
    filler = bytes(rng.randrange(32, 127) for _ in range(4096))
    read = 0
    for i in range(n):
        size = rng.choices(sizes, weights)[0]
        head = b"Return-Path: <sender%d@example.org>\nMessage-ID: <%d.%s@o2fs>\n\n" % (i, i, tag.encode())
        body = head + filler * (size // len(filler)) + filler[: size % len(filler)]
        deliver(dirs[rng.randrange(users)], "%d.%s.mx" % (i, tag), body)
        if i % 10 == 9:
            read += session(dirs[rng.randrange(users)])
    print("delivered %d read %d" % (n, read))


if __name__ == "__main__":
    main()
