#!/usr/bin/env python3
"""An idle poll over HTTP: the CPU dagsnap's loop spends per poll of an unchanged remote served
by nginx + git-http-backend on 127.0.0.1, for a small and a large repository, against what
git-sync spends per idle poll, in one run: `git ls-remote` alone, and one idle iteration of
tests/fixtures/git-sync-v4.sh (git-sync v4's steps: ls-remote, the worktree checks, the shell),
each with the processes it starts.

dagsnap's figure is its own process's CPU time (its threads' counters in
/proc/<pid>/task/*/schedstat, in nanoseconds) over the measured window divided by its polls
(counted in nginx's access log, so dagsnap runs at its default log level); the server's work is
not counted for either.

Needs nginx and fcgiwrap (apt-get install nginx fcgiwrap); runs them as the current user in a
temporary directory.

With --tls the server speaks https with a certificate of a CA made for the run (openssl), which
dagsnap and git both trust through GIT_SSL_CAINFO (git's http.sslCAInfo).

Usage: bench/idle_http.py [--seconds 20] [--period 100ms] [--sizes 200,10000] [--tls]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Server:
    """nginx in front of fcgiwrap running git-http-backend, serving `projects`."""

    def __init__(self, tmp, projects, access_log=None, tls=False):
        self.port = bench.free_port()
        self.scheme = "https" if tls else "http"
        d = os.path.join(tmp, "nginx")
        for sub in ("body", "fastcgi", "proxy", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, sub))
        listen = f"listen 127.0.0.1:{self.port};"
        if tls:
            make_certificates(d)
            listen = (f"listen 127.0.0.1:{self.port} ssl; ssl_certificate {d}/server.pem; "
                      f"ssl_certificate_key {d}/server.key;")
            self.ca_file = os.path.join(d, "ca.pem")
        socket_path = os.path.join(d, "fcgi.sock")
        self.fcgi = subprocess.Popen(["fcgiwrap", "-c", "4", "-s", f"unix:{socket_path}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        while not os.path.exists(socket_path):
            time.sleep(0.01)
        user = "user root;" if os.geteuid() == 0 else ""
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  log_format bytes '$request_method $uri $status $body_bytes_sent';
  access_log {access_log or "off"}{" bytes" if access_log else ""};
  client_body_temp_path {d}/body; fastcgi_temp_path {d}/fastcgi; proxy_temp_path {d}/proxy;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    {listen}
    location / {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT {projects};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_pass unix:{socket_path};
    }}
  }}
}}
""")
        self.nginx = subprocess.Popen(["nginx", "-p", d, "-c", conf, "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("nginx did not start")
                time.sleep(0.05)

    def close(self):
        for proc in (self.nginx, self.fcgi):
            os.killpg(proc.pid, 9)
            proc.wait()


def make_certificates(d):
    """A CA, and a certificate for 127.0.0.1 it signed, in `d`."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=dagsnap bench CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")


def dagsnap_idle(binary, url, tmp, name, seconds, period, access_log):
    """dagsnap's CPU per idle poll at its default log level. Polls are counted in the server's
    access log: an idle poll is one `POST git-upload-pack` (ls-refs), plus a `GET info/refs`
    when the reused capability advertisement is a minute old."""
    root, cache = os.path.join(tmp, name, "root"), os.path.join(tmp, name, "cache")
    bench.dagsnap_once(binary, url, root, cache)
    repo = url.rsplit("/", 1)[-1]
    polls = lambda: sum(  # noqa: E731
        1 for line in open(access_log) if line.startswith("POST ") and f"/{repo}/" in line
    )
    log_path = os.path.join(tmp, f"{name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([binary, "sync", "--repo", url, "--root", root, "--cache-dir", cache,
                                 "--period", period],
                                env=bench.env(), stdout=subprocess.DEVNULL, stderr=log)
    try:
        time.sleep(2)
        ns0, ticks0, polls0 = bench.proc_threads_cpu_ns(proc.pid), bench.proc_cpu_ticks(proc.pid)[0], polls()
        time.sleep(seconds)
        cpu, polls1 = bench.cpu_between(proc.pid, ns0, ticks0), polls()
    finally:
        proc.terminate()
        proc.wait()
    n = polls1 - polls0
    failed = open(log_path).read().count("sync failed")
    if failed:
        sys.exit(f"{failed} poll(s) failed; see {log_path}")
    return cpu / max(n, 1), n


def ls_remote_cpu(url, runs=20):
    cpus = []
    for _ in range(runs):
        proc = subprocess.Popen(["git", "ls-remote", url, "HEAD"], env=bench.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
        cpus.append(usage.ru_utime + usage.ru_stime)
    cpus.sort()
    return cpus[len(cpus) // 2]


def git_sync_model_cpu(url, tmp, name, runs=20):
    """One idle iteration of git-sync v4 (tests/fixtures/git-sync-v4.sh with `once`, against a
    root it already published): its ls-remote, worktree checks and the shell that runs them."""
    script = os.path.join(HERE, "..", "tests", "fixtures", "git-sync-v4.sh")
    root = os.path.join(tmp, name)
    subprocess.run(["sh", script, url, root, "dags", "0", "once"], env=bench.env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpus = []
    for _ in range(runs):
        proc = subprocess.Popen(["sh", script, url, root, "dags", "0", "once"], env=bench.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
        cpus.append(usage.ru_utime + usage.ru_stime)
    cpus.sort()
    return cpus[len(cpus) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--period", default="100ms")
    parser.add_argument("--sizes", default="200,10000")
    parser.add_argument("--tls", action="store_true", help="serve over https")
    args = bench.parse_args(parser)
    binary = args.binary
    rows = []
    with tempfile.TemporaryDirectory(prefix="dagsnap-bench-idle-http-") as tmp:
        projects = os.path.join(tmp, "projects")
        os.makedirs(projects)
        for size in (int(s) for s in args.sizes.split(",")):
            work = os.path.join(tmp, f"work-{size}")
            bench.make_repo(work, size, max(1, size // 50), binaries=0)
            bench.git("clone", "-q", "--bare", work, os.path.join(projects, f"r{size}.git"), cwd=tmp)
        access_log = os.path.join(tmp, "access.log")
        server = Server(tmp, projects, access_log=access_log, tls=args.tls)
        if args.tls:
            os.environ["GIT_SSL_CAINFO"] = server.ca_file
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                url = f"{server.scheme}://127.0.0.1:{server.port}/r{size}.git"
                per_poll, polls = dagsnap_idle(binary, url, tmp, f"d{size}", args.seconds, args.period,
                                               access_log)
                git = ls_remote_cpu(url)
                model = git_sync_model_cpu(url, tmp, f"g{size}")
                rows.append((size, per_poll, polls, git, model))
        finally:
            server.close()
    scheme = "HTTPS" if args.tls else "HTTP"
    print(f"Idle polls over {scheme} (nginx + git-http-backend on 127.0.0.1), CPU of the client side\n")
    print("| files | dagsnap per poll | polls | `git ls-remote` | git-sync v4's idle iteration (model) | dagsnap / git-sync |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, per_poll, polls, git, model in rows:
        print(f"| {size} | {per_poll * 1000:.2f} ms | {polls} | {git * 1000:.2f} ms | "
              f"{model * 1000:.2f} ms | {per_poll / model:.3f}x |")


if __name__ == "__main__":
    main()
