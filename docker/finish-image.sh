#!/bin/sh
# The last steps of every dagsnap image (docker/Dockerfile, docker/Dockerfile.host), run as root
# on a base that has CA certificates, ssh, nss_wrapper and git's binary.
set -eu

# git-sync's names, where git-sync's image has them: dagsnap started as git-sync reads
# git-sync's flags and environment (docs/migrating.md).
ln -sf /usr/local/bin/dagsnap /git-sync
ln -sf /usr/local/bin/dagsnap /usr/local/bin/git-sync

# The private cache, owned by the image's user: a volume mounted here (or the anonymous one
# VOLUME creates) starts with this owner and mode, so uid 65533 can lock and write it.
mkdir -p /cache
chown 65533:65533 /cache
chmod 0700 /cache

# The Airflow check runs as a program (git-sync's pre-publish hook execs it) once copied into an
# Airflow image, whatever its mode was in the build context.
chmod 0755 /opt/dagsnap /opt/dagsnap/check_dags.py

# What the runtime needs, checked here so that a wrong base fails the build, not a pod.
for tool in ssh git; do
    command -v "$tool" >/dev/null || { echo "the base image lacks $tool" >&2; exit 1; }
done
ls /usr/lib/*/libnss_wrapper.so >/dev/null || { echo "the base image lacks nss_wrapper" >&2; exit 1; }
[ -s /etc/ssl/certs/ca-certificates.crt ] || { echo "the base image lacks CA certificates" >&2; exit 1; }
/usr/local/bin/dagsnap --version
