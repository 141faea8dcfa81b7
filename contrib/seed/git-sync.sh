#!/bin/sh -e
# dagsnap in place of the `git-sync.sh` that Airflow 1.10's chart ran from a ConfigMap (the
# script of the incident in docs/migrating.md), with the same arguments, so the container spec
# does not change: only this script and Airflow's dags_folder do.
#
#   git-sync.sh REPO REF DIR REPO_HOST REPO_PORT PRIVATE_KEY SYNC_TIME
#
# DIR was the checkout Airflow read; it becomes dagsnap's root, and Airflow reads DIR/current
# (set dags_folder = DIR/current). Start with an empty DIR: dagsnap never deletes files it did
# not create, and refuses a directory that still holds the old checkout.
# REPO_HOST is not needed (dagsnap reads the host from REPO). REPO_PORT and PRIVATE_KEY apply
# to SSH repositories; the server's host key must be in KNOWN_HOSTS (default:
# ~/.ssh/known_hosts): unlike the old script, dagsnap does not trust an unknown host key.
# SYNC_TIME is in seconds.
REPO=$1
REF=$2
DIR=$3
REPO_PORT=$5
PRIVATE_KEY=$6
SYNC_TIME=$7

set -- --repo "$REPO" --ref "$REF" --root "$DIR" --link current --period "${SYNC_TIME}s"
case "$REPO" in
ssh://* | *@*:*)
    [ -n "$PRIVATE_KEY" ] && set -- "$@" --ssh-key-file "$PRIVATE_KEY"
    [ -n "$KNOWN_HOSTS" ] && set -- "$@" --ssh-known-hosts-file "$KNOWN_HOSTS"
    case "$REPO" in ssh://*) ;; *) [ -n "$REPO_PORT" ] && set -- "$@" --ssh-port "$REPO_PORT" ;; esac
    ;;
esac
# SIGTERM stops dagsnap cleanly (it finishes or abandons the publish in flight and exits 0).
exec dagsnap sync "$@"
