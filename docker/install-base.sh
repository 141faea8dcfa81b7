#!/bin/sh
# What dagsnap's runtime needs on a Debian image (docker/Dockerfile.base, docker/Dockerfile.release;
# docker/base makes the same offline with mmdebstrap): CA certificates (https remotes), the ssh
# client (ssh remotes), nss_wrapper (a passwd entry for ssh when the container's uid has none),
# and git's binary alone, without the git package's perl, curl and manuals (about 4 MB instead of
# 85 MB): gix runs `git upload-pack` as the server side of file:// remotes, and nothing else.
set -eu
apt-get update
apt-get install -y --no-install-recommends ca-certificates openssh-client libnss-wrapper
cd /tmp
apt-get download git
dpkg-deb --fsys-tarfile git_*.deb | tar -x -C / ./usr/bin/git
rm -f git_*.deb
rm -rf /var/lib/apt/lists/*
