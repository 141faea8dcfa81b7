#!/usr/bin/env python3
"""What verifying a signature costs: `--verify-signatures commit` on commits signed with an
Ed25519 and an RSA SSH key and an Ed25519 OpenPGP key, each verified in-process by dagsnap (the
`elapsed_us` of its "the signature verified" log line, one `sync --one-time` per commit into one
root), against `git verify-commit` of the same commits (which runs ssh-keygen or gpg), in one run.

Needs ssh-keygen and gpg.

Usage: bench/signatures.py [--commits 20]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DAGSNAP = os.path.join(os.path.dirname(HERE), "target/release/dagsnap")


def run(*args, env=None, cwd=None):
    return subprocess.run(args, env=env, cwd=cwd, check=True, capture_output=True, text=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gnupg = os.path.join(tmp, "gnupg")
        os.makedirs(gnupg, mode=0o700)
        env = dict(os.environ, GNUPGHOME=gnupg)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{tmp}/ed", env=env)
        run("ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", f"{tmp}/rsa", env=env)
        run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", "pat@example.com", "ed25519", "sign", "never", env=env)
        listed = run("gpg", "--with-colons", "--list-keys", "pat@example.com", env=env).stdout
        fpr = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
        subprocess.run(["gpg", "--batch", "--import-ownertrust"], input=f"{fpr}:6:\n", env=env, text=True, check=True, capture_output=True)
        keyring = os.path.join(tmp, "keyring.gpg")
        with open(keyring, "wb") as f:
            f.write(subprocess.run(["gpg", "--export", fpr], env=env, check=True, capture_output=True).stdout)
        allowed = os.path.join(tmp, "allowed")
        with open(allowed, "w") as f:
            for key in ("ed", "rsa"):
                f.write(f"{key}@example.com {open(f'{tmp}/{key}.pub').read().strip()}\n")
        repo = os.path.join(tmp, "repo")
        run("git", "init", "-q", "-b", "main", repo)
        kinds = {
            "SSH Ed25519": ["-c", "gpg.format=ssh", "-c", f"user.signingkey={tmp}/ed"],
            "SSH RSA 3072": ["-c", "gpg.format=ssh", "-c", f"user.signingkey={tmp}/rsa"],
            "OpenPGP Ed25519": ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={fpr}"],
        }
        results = []
        for kind, config in kinds.items():
            ours, git = [], []
            root, cache = os.path.join(tmp, f"root-{len(results)}"), os.path.join(tmp, f"cache-{len(results)}")
            for n in range(args.commits):
                with open(os.path.join(repo, "a.py"), "w") as f:
                    f.write(f"{kind} {n}\n")
                run("git", "-C", repo, "add", "-A", env=env)
                run("git", "-C", repo, "-c", "user.name=B", "-c", "user.email=b@example.com", *config,
                    "commit", "-q", "-S", "-m", f"{kind} {n}", env=env)
                commit = run("git", "-C", repo, "rev-parse", "HEAD").stdout.strip()
                out = run(DAGSNAP, "sync", "--one-time", "--repo", repo, "--root", root, "--cache-dir", cache,
                          "--verify-signatures", "commit", "--allowed-signers", allowed,
                          "--gpg-keyring", keyring, env=dict(env, DAGSNAP_LOG_FORMAT="json"))
                for line in out.stderr.splitlines():
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("message") == "the signature verified":
                        ours.append(int(event["elapsed_us"]))
                started = time.perf_counter()
                run("git", "-C", repo, "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", commit, env=env)
                git.append((time.perf_counter() - started) * 1e6)
            if len(ours) != args.commits:
                sys.exit(f"{kind}: dagsnap verified {len(ours)} of {args.commits} commits")
            results.append((kind, statistics.median(ours), max(ours), statistics.median(git)))
    print("| key | dagsnap, median | dagsnap, slowest | `git verify-commit`, median | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, median, slowest, git in results:
        print(f"| {kind} | {median:.0f} µs | {slowest:.0f} µs | {git / 1000:.1f} ms | {git / median:.0f}x |")


if __name__ == "__main__":
    main()
