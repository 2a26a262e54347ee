#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Compare our etcd2 against etcd 3.4 (--enable-v2) on the v2 keys API.

Every figure gets a fresh single-member server with its own data dir; runs are interleaved
(ours, etcd, ours, etcd, ...) for --rounds rounds and the median is reported. Only 127.0.0.1.
Run on demand, never from `meson test`. See tests/bench/README.md.
"""

import argparse
import hashlib
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.append(os.path.dirname(HERE))
import tls_certs  # noqa: E402  (tests/tls_certs.py)

# Figures as rows of the final table: key, label, unit, which direction is better, target on
# ratio = ours/etcd (operator, bound, text), etcd figure quoted in the issue for this machine.
ROWS = [
    ('put_c1',        'PUT c=1',              'req/s', 'higher', ('>=', 1.8, '>= 1.8x'),   '~2.1k'),
    ('put_c16',       'PUT c=16',             'req/s', 'higher', None,                      ''),
    ('put_c64',       'PUT c=64',             'req/s', 'higher', ('>=', 3.0, '>= 3x'),     '17.5k'),
    ('put_c256',      'PUT c=256',            'req/s', 'higher', ('>=', 3.0, '>= 3x'),     '19k'),
    ('get_c64',       'GET c=64',             'req/s', 'higher', ('>=', 2.5, '>= 2.5x'),   '44k'),
    ('mixed_c64',     'mixed 90/10 c=64',     'req/s', 'higher', None,                      ''),
    ('watch_p99',     '1000 watchers p99',    'ms',    'lower',  ('<=', 1 / 3, '<= 1/3'),  '~40'),
    ('watch_last',    '1000 watchers last',   'ms',    'lower',  ('<=', 1 / 3, '<= 1/3'),  ''),
    ('rss_idle',      'RSS idle',             'MB',    'lower',  ('<=', 1 / 5, '<= 1/5'),  '24'),
    ('rss_idle_anon', '  of which RssAnon',   'MB',    'lower',  None,                      ''),
    ('rss_100k',      'RSS 100k keys x 256 B', 'MB',   'lower',  ('<=', 1 / 4, '<= 1/4'),  '~390'),
    ('rss_100k_anon', '  of which RssAnon',   'MB',    'lower',  None,                      ''),
    ('restart_100k',  'restart w/ 100k keys', 'ms',    'lower',  ('<=', 1 / 3, '<= 1/3'),  '~1000'),
    # 3-member clusters (cl_* groups): connections round-robin over the members' client ports
    ('cl_put_c1',     '3m PUT c=1',           'req/s', 'higher', None,                      '~1k'),
    ('cl_put_c64',    '3m PUT c=64',          'req/s', 'higher', ('>=', 3.0, '>= 3x'),     '8.7k'),
    ('cl_put_c256',   '3m PUT c=256',         'req/s', 'higher', ('>=', 3.0, '>= 3x'),     '12k'),
    ('cl_get_c64',    '3m GET c=64',          'req/s', 'higher', ('>=', 2.5, '>= 2.5x'),   '54k'),
    ('cl_failover',   '3m failover median',   'ms',    'lower',  ('<=', 1.0, '<= 1x'),     '~1000'),
    ('cl_failover_max', '3m failover max',    'ms',    'lower',  ('<=', 1.0, '<= 1x'),     ''),
    # a proxy (--proxy on) of each implementation in front of a 3-member cluster of the same kind (px group)
    ('px_get_c1_added', 'proxy GET c=1 added p50', 'ms',  'lower',  ('<=', 1.0, '<= 1x'),     ''),
    ('px_get_c64',    'proxy GET c=64',       'req/s', 'higher', ('>=', 1.0, '>= 1x'),     ''),
    ('px_get_c64_frac', '  % of direct',      '%',     'higher', ('>=', 1.0, '>= 1x'),     ''),
    ('px_put_c64',    'proxy PUT c=64',       'req/s', 'higher', ('>=', 1.0, '>= 1x'),     ''),
    ('px_put_c64_frac', '  % of direct',      '%',     'higher', ('>=', 1.0, '>= 1x'),     ''),
]
ROWS += [
    # the bare responder (loadgen --mode serve) under the same GET c=64 load, in the get_c64 group (--bare)
    ('bare_get_c64',  'bare responder GET c=64', 'req/s', 'higher', None,                   ''),
    # idle10k: 10k idle keep-alive connections (one GET each), RSS delta per connection and a c=4 GET
    # load on other connections before and while they are open
    ('idle10k_kb',    '10k idle conns: RSS/conn', 'KB',  'lower',  None,                      ''),
    ('idle10k_p50_base', 'GET c=4 p50, none idle', 'ms', 'lower',  None,                      ''),
    ('idle10k_p50',   'GET c=4 p50, 10k idle', 'ms',   'lower',  None,                      ''),
    ('idle10k_p99_base', 'GET c=4 p99, none idle', 'ms', 'lower',  None,                      ''),
    ('idle10k_p99',   'GET c=4 p99, 10k idle', 'ms',   'lower',  None,                      ''),
]
# rows whose figure is the maximum (not the median) over the runs of another row
MAX_ROWS = {'cl_failover_max': 'cl_failover'}

# Figure groups: one fresh server per group and round; a group yields one or more rows.
GROUPS = ['put_c1', 'put_c16', 'put_c64', 'put_c256', 'get_c64', 'mixed_c64', 'watch',
          'rss_idle', 'keys100k']
# 3-member cluster groups: a fresh cluster of each implementation per group and round (cl_failover:
# per repetition); cl_lost runs on ours only. Not in the default --groups (see --cluster).
CL_GROUPS = ['cl_put_c64', 'cl_get_c64', 'cl_failover', 'cl_put_c1', 'cl_put_c256', 'cl_lost']
# Proxy group (--proxy-bench): a 3-member cluster plus a proxy of the same implementation; the same
# loads directly against member m0 and through the proxy, interleaved.
PX_GROUPS = ['px']
# 10k idle keep-alive connections (not in the default --groups)
IDLE_GROUPS = ['idle10k']

# --issue11: the cost of TLS. tls_*: one member, the load over an https client port; cl_ptls_*: a
# 3-member cluster with peer TLS (client certificates required between members), plain clients;
# cl_tls_*: both. Next to their plain twins, interleaved.
TLS_GROUPS = ['tls_put_c64', 'tls_get_c64', 'cl_ptls_put_c64', 'cl_tls_put_c64']
ISSUE11_GROUPS = ['put_c64', 'tls_put_c64', 'get_c64', 'tls_get_c64', 'cl_put_c64', 'cl_ptls_put_c64',
                  'cl_tls_put_c64']
ISSUE11_ROWS = [
    # key, label, plain twin (for the "cost" column: TLS figure / plain figure, per implementation)
    ('put_c64',         '1m PUT c=64',                         None),
    ('tls_put_c64',     '1m PUT c=64, client TLS',             'put_c64'),
    ('get_c64',         '1m GET c=64',                         None),
    ('tls_get_c64',     '1m GET c=64, client TLS',             'get_c64'),
    ('cl_put_c64',      '3m PUT c=64',                         None),
    ('cl_ptls_put_c64', '3m PUT c=64, peer TLS',               'cl_put_c64'),
    ('cl_tls_put_c64',  '3m PUT c=64, peer + client TLS',      'cl_put_c64'),
]

# --issue10: exactly issue 10's figures, in this order (interleaved ours/etcd in each group)
ISSUE10_GROUPS = ['put_c1', 'put_c64', 'put_c256', 'get_c64', 'watch',
                  'cl_put_c64', 'cl_put_c256', 'cl_get_c64', 'px', 'idle10k']
# Its table: key, label, unit, target. A target is (on, op, bound, text): on 'ratio' = ours/etcd,
# on 'ours' = our figure itself (an absolute bound); None = information only.
ISSUE10_ROWS = [
    ('put_c1',         '1m PUT c=1',               'req/s', ('ratio', '>=', 1.2, '>= 1.2x')),
    ('put_c64',        '1m PUT c=64',              'req/s', ('ratio', '>=', 3.0, '>= 3x')),
    ('put_c256',       '1m PUT c=256',             'req/s', ('ratio', '>=', 3.0, '>= 3x')),
    ('get_c64',        '1m GET c=64',              'req/s', ('ratio', '>=', 2.5, '>= 2.5x')),
    ('bare_get_c64',   '  bare responder GET c=64', 'req/s', None),
    ('get_c64_bare',   '  GET c=64 % of bare',     '%',     ('ours', '>=', 50.0, 'ours >= 50 %')),
    ('watch_p99',      '1m 1000 watchers p99',     'ms',    ('ratio', '<=', 0.5, '<= 0.5x')),
    ('watch_last',     '1m 1000 watchers last',    'ms',    ('ratio', '<=', 0.5, '<= 0.5x')),
    ('cl_put_c64',     '3m PUT c=64',              'req/s', ('ratio', '>=', 3.0, '>= 3x')),
    ('cl_put_c256',    '3m PUT c=256',             'req/s', ('ratio', '>=', 3.0, '>= 3x')),
    ('cl_get_c64',     '3m GET c=64',              'req/s', ('ratio', '>=', 2.5, '>= 2.5x')),
    ('px_get_c64',     'proxy GET c=64',           'req/s', ('ratio', '>=', 2.0, '>= 2x')),
    ('px_get_c64_frac', '  % of direct',           '%',     ('ours', '>=', 60.0, 'ours >= 60 %')),
    ('idle10k_kb',     '10k idle: RSS/conn',       'KB',    None),
    ('idle10k_p50_base', '  GET c=4 p50, none idle', 'ms',  None),
    ('idle10k_p50',    '  GET c=4 p50, 10k idle',  'ms',    None),
    ('idle10k_p99_base', '  GET c=4 p99, none idle', 'ms',  None),
    ('idle10k_p99',    '  GET c=4 p99, 10k idle',  'ms',    None),
]

running = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def http_status(port, path, timeout=1.0):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path)
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Server:
    """One single-member server (ours or etcd) on 127.0.0.1 with its own data dir."""

    def __init__(self, impl, binary, workdir):
        self.impl = impl
        self.binary = binary
        self.workdir = workdir
        self.datadir = os.path.join(workdir, 'data')
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc = None
        self.logf = None
        self.starts = 0
        # --issue11: client TLS (the load goes to an https port; client_port stays a plain one for the
        # harness's own health and leader checks) and peer TLS. Both are a Certs or None.
        self.client_tls = None
        self.peer_tls = None
        self.tls_port = free_port()

    @property
    def lg_port(self):              # what Bench.lg() loads: the https port with client TLS
        return self.tls_port if self.client_tls else self.client_port

    def client_urls(self):
        c = f'http://127.0.0.1:{self.client_port}'
        if not self.client_tls:
            return c, c
        t = f'https://127.0.0.1:{self.tls_port}'
        return f'{t},{c}', t

    def tls_args(self):
        a = []
        if self.client_tls:
            a += ['--cert-file', self.client_tls.cert, '--key-file', self.client_tls.key]
        if self.peer_tls:
            a += ['--peer-cert-file', self.peer_tls.cert, '--peer-key-file', self.peer_tls.key,
                  '--peer-trusted-ca-file', self.peer_tls.ca, '--peer-client-cert-auth']
        return a

    @property
    def peer_url(self):
        return f'{"https" if self.peer_tls else "http"}://127.0.0.1:{self.peer_port}'

    def argv(self):
        listen, advertise = self.client_urls()
        p = self.peer_url
        a = [self.binary,
             '--name', 'bench',
             '--data-dir', self.datadir,
             '--listen-client-urls', listen,
             '--advertise-client-urls', advertise,
             '--listen-peer-urls', p,
             '--initial-advertise-peer-urls', p,
             '--initial-cluster', f'bench={p}'] + self.tls_args()
        if self.impl == 'etcd':
            a.append('--enable-v2')
        return a

    def start(self, timeout=30.0):
        """Start and wait for /health 200 (polled every 5 ms). Returns seconds from spawn to 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith('ETCD')}
        self.starts += 1
        self.logf = open(os.path.join(self.workdir, f'{self.impl}.{self.starts}.log'), 'wb')
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        running.append(self)
        while True:
            if http_status(self.client_port, '/health', timeout=0.5) == 200:
                t = time.monotonic() - t0
                if self.proc.poll() is not None:
                    raise RuntimeError(f'{self.impl} exited, yet port {self.client_port} answers: '
                                       f'someone else is listening there')
                return t
            if self.proc.poll() is not None:
                raise RuntimeError(f'{self.impl} exited with status {self.proc.returncode} '
                                   f'during start (log: {self.logf.name})')
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f'{self.impl}: /health not 200 after {timeout:.0f} s')
            time.sleep(0.005)

    def rss_mb(self, field='VmRSS'):
        with open(f'/proc/{self.proc.pid}/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError(f'no {field}')

    def stop(self, timeout=15.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f'{self.impl} {getattr(self, "name", "")}: no exit {timeout:.0f} s after SIGTERM, '
                    f'killing (log: {self.logf.name})')
                self.proc.kill()
                self.proc.wait()
        if self in running:
            running.remove(self)
        self.proc = None
        self.logf.close()


class Member(Server):
    """One member of a static 3-member cluster; same flags for ours and etcd."""

    def __init__(self, impl, binary, workdir, name):
        super().__init__(impl, binary, workdir)
        self.name = name
        self.datadir = os.path.join(workdir, name)
        self.initial_cluster = None
        self.token = None

    def argv(self):
        listen, advertise = self.client_urls()
        p = self.peer_url
        a = [self.binary,
             '--name', self.name,
             '--data-dir', self.datadir,
             '--listen-client-urls', listen,
             '--advertise-client-urls', advertise,
             '--listen-peer-urls', p,
             '--initial-advertise-peer-urls', p,
             '--initial-cluster', self.initial_cluster,
             '--initial-cluster-token', self.token,
             '--initial-cluster-state', 'new'] + self.tls_args()
        if self.impl == 'etcd':
            a.append('--enable-v2')
        return a

    def spawn(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith('ETCD')}
        self.starts += 1
        self.logf = open(os.path.join(self.workdir, f'{self.impl}.{self.name}.{self.starts}.log'), 'wb')
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        if self not in running:
            running.append(self)

    def wait_health(self, t0, timeout=30.0):
        while True:
            if http_status(self.client_port, '/health', timeout=0.5) == 200:
                if self.proc.poll() is not None:
                    raise RuntimeError(f'{self.impl} {self.name} exited, yet port {self.client_port} '
                                       f'answers: someone else is listening there')
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f'{self.impl} {self.name} exited with status {self.proc.returncode} '
                                   f'during start (log: {self.logf.name})')
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f'{self.impl} {self.name}: /health not 200 after {timeout:.0f} s '
                                   f'(log: {self.logf.name})')
            time.sleep(0.005)

    def start(self, timeout=30.0):
        t0 = time.monotonic()
        self.spawn()
        return self.wait_health(t0, timeout)

    def kill9(self):
        """SIGKILL and reap; the data dir stays for a restart."""
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.logf.close()
        if self in running:
            running.remove(self)


class Cluster:
    """A static 3-member cluster (--initial-cluster bootstrap) on 127.0.0.1, fresh data dirs."""

    def __init__(self, impl, binary, workdir, size=3, client_tls=None, peer_tls=None):
        self.impl = impl
        self.members = [Member(impl, binary, workdir, f'm{i}') for i in range(size)]
        for m in self.members:
            m.client_tls, m.peer_tls = client_tls, peer_tls
        self.client_tls = client_tls
        ic = ','.join(f'{m.name}={m.peer_url}' for m in self.members)
        token = f'bench-{os.getpid()}-{os.path.basename(workdir)}'
        for m in self.members:
            m.initial_cluster = ic
            m.token = token

    @property
    def ports(self):
        return [m.client_port for m in self.members]

    @property
    def client_port(self):          # what Bench.lg() passes as --port: all members
        return ','.join(str(p) for p in self.ports)

    @property
    def lg_port(self):
        return ','.join(str(m.lg_port) for m in self.members)

    def start(self, timeout=30.0):
        t0 = time.monotonic()
        for m in self.members:
            m.spawn()
        for m in self.members:
            m.wait_health(t0, timeout)
        self.leader(timeout=timeout)
        return time.monotonic() - t0

    def stop(self):
        for m in self.members:
            m.stop()

    def leader(self, timeout=10.0, exclude=None):
        """The member all live members agree is leader (by /v2/stats/self), waiting up to timeout."""
        t0 = time.monotonic()
        while True:
            states = {}
            for m in self.members:
                if m.proc is None or m is exclude:
                    continue
                st = get_json(m.client_port, '/v2/stats/self')
                if st:
                    states[m.name] = st
            leads = [m for m in self.members if states.get(m.name, {}).get('state') == 'StateLeader']
            ids = {st.get('leaderInfo', {}).get('leader') for st in states.values()}
            if len(leads) == 1 and len(ids) == 1 and None not in ids and \
               states[leads[0].name].get('id') in ids:
                return leads[0]
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f'{self.impl}: no agreed leader after {timeout:.0f} s: '
                                   + ', '.join(f'{k}={v.get("state")}/{v.get("leaderInfo", {}).get("leader")}'
                                               for k, v in states.items()))
            time.sleep(0.02)


class ProxyNode(Member):
    """`--proxy on` in front of a cluster: only client URLs and the members' peer URLs."""

    def __init__(self, impl, binary, workdir, cluster):
        super().__init__(impl, binary, workdir, 'proxy')
        self.initial_cluster = ','.join(f'{m.name}=http://127.0.0.1:{m.peer_port}' for m in cluster.members)

    def argv(self):
        c = f'http://127.0.0.1:{self.client_port}'
        return [self.binary, '--proxy', 'on', '--name', self.name, '--data-dir', self.datadir,
                '--listen-client-urls', c, '--advertise-client-urls', c,
                '--initial-cluster', self.initial_cluster]


class ProxiedCluster(Cluster):
    """A 3-member cluster and one proxy of the same implementation."""

    def __init__(self, impl, binary, workdir):
        super().__init__(impl, binary, workdir)
        self.proxy = ProxyNode(impl, binary, workdir, self)

    def start(self, timeout=30.0):
        t = super().start(timeout)
        t0 = time.monotonic()
        self.proxy.spawn()
        self.proxy.wait_health(t0, timeout)
        return t

    def stop(self):
        self.proxy.stop()
        super().stop()


class BareServer:
    """`loadgen --mode serve`: the bare responder (a tiny 200 for every request, keep-alive). It takes
    the same loads as a server, so the GET figure shows what loopback TCP plus the load generator
    allow on this machine (and its PUTs make the preload a no-op)."""

    impl = 'bare'

    def __init__(self, loadgen, workdir):
        self.loadgen = loadgen
        self.workdir = workdir
        self.client_port = free_port()
        self.proc = None
        self.logf = None

    def start(self, timeout=10.0):
        self.logf = open(os.path.join(self.workdir, 'bare.log'), 'wb')
        self.proc = subprocess.Popen([self.loadgen, '--port', str(self.client_port), '--mode', 'serve'],
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        running.append(self)
        t0 = time.monotonic()
        while True:
            try:
                socket.create_connection(('127.0.0.1', self.client_port), timeout=0.5).close()
                return time.monotonic() - t0
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f'loadgen serve exited with status {self.proc.returncode} '
                                   f'(log: {self.logf.name})')
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f'loadgen serve: port {self.client_port} not open after {timeout:.0f} s')
            time.sleep(0.005)

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self in running:
            running.remove(self)
        self.proc = None
        self.logf.close()


def raise_nofile(need):
    """Soft RLIMIT_NOFILE to at least `need` (the hard limit too, if root and it is lower), for this
    process and so for the servers it spawns afterwards. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    try:
        if hard != resource.RLIM_INFINITY and hard < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (ValueError, OSError) as e:
        log(f'  could not raise RLIMIT_NOFILE from {soft}/{hard} to {need}: {e}')
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def get_json(port, path, timeout=1.0):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            return None
        return json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def put_once(port, key, value, timeout):
    """One PUT on a new connection. Returns the HTTP status, or None on a connection error/timeout."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('PUT', '/v2/keys/' + key, body='value=' + value,
                     headers={'Content-Type': 'application/x-www-form-urlencoded'})
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def build_loadgen(out):
    # One binary per version of the source (several checkouts share --tmpdir: a newer binary of an older
    # source must not be taken for this one's).
    src = os.path.join(HERE, 'loadgen.c')
    with open(src, 'rb') as f:
        out = out + '-' + hashlib.sha256(f.read()).hexdigest()[:12]
    if os.path.exists(out):
        return out
    cmd = ['cc', '-O2', '-Wall', '-Wextra', '-o', out, src, '-lgnutls']
    log('building loadgen: ' + ' '.join(cmd))
    subprocess.run(cmd, check=True)
    return out


class Certs:
    """A CA and one certificate for 127.0.0.1 (serverAuth and clientAuth: members use it both ways), made
    with openssl in `directory` (tests/tls_certs.py). ECDSA P-256, as etcd's docs make them with cfssl."""

    def __init__(self, directory):
        c = tls_certs.Certs(directory)
        c.make_ca('ca')
        c.make_cert('server', 'serverAuth,clientAuth')
        self.ca = c.crt('ca')
        self.cert, self.key = c.pair('server')


class Bench:
    def __init__(self, args):
        self.args = args
        self.loadgen = args.loadgen
        self.lost = None
        self._certs = None

    def certs(self):
        if self._certs is None:
            d = tempfile.mkdtemp(prefix='bench-certs-', dir=self.args.tmpdir)
            self._certs = Certs(d)
        return self._certs

    def lg(self, srv, *extra, timeout=None):
        cmd = [self.loadgen, '--port', str(getattr(srv, 'lg_port', srv.client_port)), *map(str, extra)]
        tls = getattr(srv, 'client_tls', None)
        if tls:
            cmd += ['--tls-ca', tls.ca, '--tls-cert', tls.cert, '--tls-key', tls.key]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout or (self.args.duration + 120))
        lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
        if not lines:
            raise RuntimeError(f'loadgen gave no result: {r.stderr.strip()}')
        res = json.loads(lines[-1])
        if 'error' in res:
            raise RuntimeError(f'loadgen: {res["error"]}: {r.stderr.strip()}')
        return res

    def preload(self, srv, prefix, n):
        res = self.lg(srv, '--mode', 'put', '-c', 64, '-n', n, '-s', self.args.size, '--prefix', prefix,
                      '-d', 300, timeout=400)
        if res['ok'] != n:
            raise RuntimeError(f'preload of {n} keys: only {res["ok"]} ok, {res["non2xx"]} non-2xx, '
                               f'{res["conn_errors"]} connection errors')
        return res

    def run_group(self, group, srv):
        """Run one figure group on a freshly started server. Returns {row_key: (value, detail)}."""
        a = self.args
        if group.startswith('put_c'):
            c = int(group[5:])
            r = self.lg(srv, '--mode', 'put', '-c', c, '-d', a.duration, '-s', a.size)
            return {group: (r['rps'], r)}
        if group.startswith('tls_'):
            group = group[4:]
            return {'tls_' + k: v for k, v in self.run_group(group, srv).items()}
        if group.startswith('cl_ptls_') or group.startswith('cl_tls_'):
            kind, rest = group.split('_')[1], '_'.join(group.split('_')[2:])
            return {f'cl_{kind}_' + k[3:]: v for k, v in self.run_group('cl_' + rest, srv).items()}
        if group in ('get_c64', 'mixed_c64'):
            self.preload(srv, 'g', a.keys)
            mode = group.split('_')[0]
            r = self.lg(srv, '--mode', mode, '-c', 64, '-d', a.duration, '-s', a.size,
                        '--prefix', 'g', '-k', a.keys)
            return {group: (r['rps'], r)}
        if group == 'watch':
            r = self.lg(srv, '--mode', 'watch', '-w', a.watchers, '-d', 10)
            if r['notified'] != a.watchers:
                raise RuntimeError(f'only {r["notified"]} of {a.watchers} watchers notified '
                                   f'(errors {r["errors"]}, answered before the PUT {r["early"]}, '
                                   f'PUT status {r["put_status"]})')
            return {'watch_p99': (r['p99_ms'], r), 'watch_last': (r['last_ms'], r)}
        if group == 'rss_idle':
            time.sleep(a.settle)
            return {'rss_idle': (srv.rss_mb(), {}), 'rss_idle_anon': (srv.rss_mb('RssAnon'), {})}
        if group == 'keys100k':
            p = self.preload(srv, 'k', a.big_keys)
            time.sleep(a.settle)
            rss, anon = srv.rss_mb(), srv.rss_mb('RssAnon')
            srv.stop()
            t = srv.start()
            # the data must have survived the restart
            last = f'/v2/keys/k/{a.big_keys - 1}'
            st = http_status(srv.client_port, last)
            detail = {'preload_rps': p['rps'], 'key_after_restart': st}
            if st != 200:
                log(f'  restart: GET {last} after restart gave {st}')
            return {'rss_100k': (rss, detail), 'rss_100k_anon': (anon, {}),
                    'restart_100k': (t * 1000.0, detail)}
        if group == 'cl_put_c1':
            # One connection can't be spread over 3 members: measure each member alone for a third
            # of the time and combine as one PUT at a time round-robin over the members would
            # (equal request counts: the harmonic mean of the members' rates).
            leader = srv.leader()
            rates, parts = [], []
            for m in srv.members:
                r = self.lg(m, '--mode', 'put', '-c', 1, '-d', max(1.0, a.duration / 3), '-s', a.size,
                            '--prefix', f'bench/{m.name}')
                rates.append(r['rps'])
                role = 'L' if m is leader else 'F'
                parts.append(f'{m.name}({role})={fmt(r["rps"])}/s,p50={r["p50_ms"]:.2f}ms')
            d = {'members': ' '.join(parts)}
            rps = len(rates) / sum(1.0 / x for x in rates) if all(rates) else 0.0
            return {group: (rps, d)}
        if group.startswith('cl_put_c'):
            c = int(group[8:])
            r = self.lg(srv, '--mode', 'put', '-c', c, '-d', a.duration, '-s', a.size)
            return {group: (r['rps'], r)}
        if group == 'cl_get_c64':
            self.preload(srv, 'g', a.keys)
            r = self.lg(srv, '--mode', 'get', '-c', 64, '-d', a.duration, '-s', a.size,
                        '--prefix', 'g', '-k', a.keys)
            return {group: (r['rps'], r)}
        if group == 'cl_failover':
            ms, d = self.failover(srv)
            return {'cl_failover': (ms, d), 'cl_failover_max': (ms, d)}
        if group == 'cl_lost':
            return {'cl_lost': (None, self.lost_writes(srv))}
        if group == 'px':
            return self.proxy_figures(srv)
        if group == 'idle10k':
            return self.idle_figures(srv)
        raise ValueError(group)

    def idle_figures(self, srv):
        """--idle-conns (10k) keep-alive connections, one GET each, then idle. Figures: the server's
        RSS delta per connection (KB) and the p50/p99 of a c=4 GET load on other connections, first
        without them, then while they are open."""
        a = self.args
        n = a.idle_conns
        self.preload(srv, 'g', a.keys)
        base = self.lg(srv, '--mode', 'get', '-c', 4, '-d', a.duration, '--prefix', 'g', '-k', a.keys)
        time.sleep(a.settle)
        rss0 = srv.rss_mb()
        cmd = [self.loadgen, '--port', str(srv.client_port), '--mode', 'idle', '-c', str(n),
               '--prefix', 'g', '-k', str(a.keys), '-d', str(max(120.0, 10 * a.duration + 60))]
        idle = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        end = None
        try:
            ready = None
            t0 = time.monotonic()
            while ready is None and time.monotonic() - t0 < 150:
                rd, _, _ = select.select([idle.stdout], [], [], 1.0)
                if rd:
                    line = idle.stdout.readline()
                    if not line:
                        break
                    if line.startswith('{'):
                        ready = json.loads(line)
            if ready is None or 'error' in ready:
                raise RuntimeError(f'idle connections not set up: {ready}')
            if ready['open'] != n:
                raise RuntimeError(f'only {ready["open"]} of {n} idle connections set up: {ready}')
            time.sleep(a.settle)
            rss1 = srv.rss_mb()
            during = self.lg(srv, '--mode', 'get', '-c', 4, '-d', a.duration, '--prefix', 'g', '-k', a.keys)
        finally:
            idle.send_signal(signal.SIGTERM)
            try:
                out, err = idle.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                idle.kill()
                out, err = idle.communicate()
            ends = [json.loads(l) for l in out.splitlines() if l.startswith('{')]
            end = ends[-1] if ends else None
        if end is None or end.get('phase') != 'end':
            raise RuntimeError(f'idle loadgen gave no end line: {err.strip()}')
        # connections the server dropped while we measured make the figure suspect: count as errors
        d = {'rss0_mb': round(rss0, 1), 'rss1_mb': round(rss1, 1), 'setup_s': ready['setup_seconds'],
             'errors': end['closed_by_server'], 'nofile': resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
        kb = (rss1 - rss0) * 1024.0 / n
        bd = dict(base, errors=0)
        dd = dict(during, closed_by_server=end['closed_by_server'])
        return {'idle10k_kb': (kb, d),
                'idle10k_p50_base': (base['p50_ms'], bd), 'idle10k_p99_base': (base['p99_ms'], bd),
                'idle10k_p50': (during['p50_ms'], dd), 'idle10k_p99': (during['p99_ms'], dd)}

    def proxy_figures(self, pc):
        """Directly against the member the proxy forwards to (its first endpoint) vs through the proxy,
        same loads, alternating."""
        a = self.args
        proxy = pc.proxy
        eps = (get_json(proxy.client_port, '/v2/config/local/proxy') or {}).get('endpoints') or []
        by_url = {f'http://127.0.0.1:{m.client_port}': m for m in pc.members}
        if not eps or eps[0].rstrip('/') not in by_url:
            raise RuntimeError(f'{pc.impl} proxy: endpoints {eps} are not the members')
        direct = by_url[eps[0].rstrip('/')]
        self.preload(direct, 'g', a.keys)
        out = {}
        # c=1 GET latency: several short alternating runs, the median p50 of each side
        p50 = {'direct': [], 'proxy': []}
        for _ in range(3 if not a.issue10 else 0):
            for side, srv in (('direct', direct), ('proxy', proxy)):
                r = self.lg(srv, '--mode', 'get', '-c', 1, '-d', max(1.0, a.duration / 3), '--prefix', 'g',
                            '-k', a.keys)
                p50[side].append(r['p50_ms'])
        if p50['direct']:
            d50, x50 = median(p50['direct']), median(p50['proxy'])
            out['px_get_c1_added'] = (x50 - d50, {'p50_ms': x50, 'direct_p50_ms': d50})
        for mode in ('get', 'put') if not a.issue10 else ('get',):
            extra = ['--prefix', 'g', '-k', a.keys] if mode == 'get' else []
            rd = self.lg(direct, '--mode', mode, '-c', 64, '-d', a.duration, '-s', a.size, *extra)
            rx = self.lg(proxy, '--mode', mode, '-c', 64, '-d', a.duration, '-s', a.size, *extra)
            rx = dict(rx, direct_rps=rd['rps'])
            out[f'px_{mode}_c64'] = (rx['rps'], rx)
            out[f'px_{mode}_c64_frac'] = (100.0 * rx['rps'] / rd['rps'] if rd['rps'] else 0.0,
                                          {'direct_rps': rd['rps'], 'members': direct.name})
        return out

    def failover(self, cl):
        """One writer, one PUT at a time round-robin over all members; kill -9 the leader and
        return the ms from the kill to the next successful (2xx) write, all of whose request was
        sent after the kill."""
        a = self.args
        leader = cl.leader()
        ports = cl.ports
        i = n = 0
        t_end = time.monotonic() + a.failover_warmup
        while time.monotonic() < t_end:
            st = put_once(ports[i % len(ports)], f'fo/{n}', 'v', 2.0)
            if st not in (200, 201):
                raise RuntimeError(f'write before the kill failed: {st}')
            i += 1
            n += 1
        tries = {'ok': 0, 'timeout_or_refused': 0, 'non2xx': 0}
        t_kill = time.monotonic()
        leader.kill9()
        while True:
            t = time.monotonic()
            if t - t_kill > 60:
                raise RuntimeError(f'no successful write 60 s after killing the leader {tries}')
            st = put_once(ports[i % len(ports)], f'fo/{n}', 'v', a.failover_timeout)
            i += 1
            n += 1
            if st in (200, 201):
                ms = (time.monotonic() - t_kill) * 1000.0
                break
            tries['timeout_or_refused' if st is None else 'non2xx'] += 1
            if time.monotonic() - t < 0.002:    # fast failure: don't spin on the 2 cores
                time.sleep(0.002)
        new = cl.leader(exclude=leader)
        d = dict(tries, killed=leader.name, new_leader=new.name)
        return ms, d

    def lost_writes(self, cl):
        """Writers spread over the members; --lost-rounds times kill -9 the leader and restart it;
        at the end a quorum read of every acknowledged key. Returns a dict of counts."""
        import threading
        a = self.args
        ports = cl.ports
        acked = {}
        stop = threading.Event()
        lock = threading.Lock()
        kill_at = [float('inf')]    # monotonic time of the current round's kill
        resumed = [None]            # when the first PUT *sent after* that kill was acknowledged
        stats = {'attempts': 0, 'failed': 0}

        def writer(j):
            i, n = j, 0
            while not stop.is_set():
                key, val = f'lost/w{j}/{n}', f'{j}-{n}-{os.getpid()}'
                t = time.monotonic()
                st = put_once(ports[i % len(ports)], key, val, 3.0)
                with lock:
                    stats['attempts'] += 1
                    if st in (200, 201):
                        acked[key] = val
                        if t > kill_at[0] and resumed[0] is None:
                            resumed[0] = time.monotonic()
                    else:
                        stats['failed'] += 1
                i += 1
                n += 1          # never reuse a key, acknowledged or not
                if st not in (200, 201) and time.monotonic() - t < 0.005:
                    time.sleep(0.005)

        threads = [threading.Thread(target=writer, args=(j,), daemon=True) for j in range(a.lost_writers)]
        for t in threads:
            t.start()
        recov = []
        rounds = 0
        try:
            for r in range(a.lost_rounds):
                time.sleep(a.lost_pause)
                leader = cl.leader(timeout=20)
                with lock:
                    resumed[0] = None
                    t_kill = kill_at[0] = time.monotonic()
                leader.kill9()
                while resumed[0] is None and time.monotonic() - t_kill < 30:
                    time.sleep(0.005)
                with lock:
                    recov.append((resumed[0] - t_kill) * 1000.0 if resumed[0] is not None else None)
                    kill_at[0] = float('inf')
                leader.start(timeout=30)
                cl.leader(timeout=20)
                rounds += 1
                log(f'  cl_lost round {r + 1}: killed leader {leader.name}, writes resumed after '
                    f'{fmt(recov[-1])} ms, {len(acked)} acknowledged so far')
            time.sleep(a.lost_pause)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        # every acknowledged write must be there, with its value, on a quorum read (from each member)
        lost = set()
        for m in cl.members:
            got = get_json(m.client_port, '/v2/keys/lost?recursive=true&quorum=true', timeout=30)
            if got is None:
                raise RuntimeError(f'quorum read of /lost on {m.name} failed')
            have = {}
            stack = [got['node']]
            while stack:
                nd = stack.pop()
                for c in nd.get('nodes', []) or []:
                    if c.get('dir'):
                        stack.append(c)
                    else:
                        have[c['key']] = c.get('value')
            lost |= {k for k, v in acked.items() if have.get('/' + k) != v}
        rec = [x for x in recov if x is not None]
        return {'rounds': rounds, 'acked': len(acked), 'attempts': stats['attempts'],
                'failed': stats['failed'], 'lost': len(lost), 'lost_sample': sorted(lost)[:5],
                'resume_median_ms': median(rec), 'resume_max_ms': max(rec) if rec else None,
                'no_resume': len(recov) - len(rec)}

    def run(self):
        a = self.args
        impls = [i for i in ('ours', 'etcd') if i in a.impls]
        binaries = {'ours': a.etcd2, 'etcd': a.etcd}
        results = {}     # row -> impl -> [values]
        details = {}     # row -> impl -> [detail dicts]
        t_start = time.monotonic()
        for group in a.groups:
            reps = max(a.rounds, a.failover_reps) if group == 'cl_failover' else a.rounds
            if group == 'cl_lost':
                reps = 1
            if group == 'idle10k':
                # the servers inherit it; ours raises its own limit anyway, etcd (Go) may not
                got = raise_nofile(a.idle_conns + 1024)
                if got < a.idle_conns + 1024:
                    log(f'  idle10k: RLIMIT_NOFILE is {got}, fewer than {a.idle_conns} connections + margin')
            # --bare: the bare responder takes the same GET c=64 load, in the same rounds
            group_impls = impls + ['bare'] if (group == 'get_c64' and a.bare) else impls
            for rnd in range(reps):
                for impl in group_impls:
                    if group == 'cl_lost' and impl != 'ours':
                        continue
                    work = tempfile.mkdtemp(prefix=f'bench-{impl}-{group}-', dir=a.tmpdir)
                    if impl == 'bare':
                        srv = BareServer(self.loadgen, work)
                    elif group == 'px':
                        srv = ProxiedCluster(impl, binaries[impl], work)
                    elif group.startswith('cl_ptls_'):
                        srv = Cluster(impl, binaries[impl], work, peer_tls=self.certs())
                    elif group.startswith('cl_tls_'):
                        srv = Cluster(impl, binaries[impl], work, client_tls=self.certs(),
                                      peer_tls=self.certs())
                    elif group.startswith('cl_'):
                        srv = Cluster(impl, binaries[impl], work)
                    else:
                        srv = Server(impl, binaries[impl], work)
                        if group.startswith('tls_'):
                            srv.client_tls = self.certs()
                    ok = False
                    load1 = os.getloadavg()[0]      # the machine is shared: note how busy it was
                    try:
                        srv.start()
                        vals = self.run_group(group, srv)
                        ok = True
                    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                        log(f'  {group} {impl} round {rnd + 1}: FAILED: {e}')
                        vals = {}
                    finally:
                        srv.stop()
                    for row, (v, d) in vals.items():
                        if row == 'cl_lost':
                            self.lost = d
                            log(f'  cl_lost ours: {d}')
                            continue
                        # the bare responder's figure is a row of its own, shown in the "ours" column
                        rkey, rimpl = ('bare_get_c64', 'ours') if impl == 'bare' else (row, impl)
                        results.setdefault(rkey, {}).setdefault(rimpl, []).append(v)
                        details.setdefault(rkey, {}).setdefault(rimpl, []).append(d)
                        log(f'  {row:13s} {impl:4s} round {rnd + 1}: {fmt(v)} load1={load1:.2f} {brief(d)}')
                    if ok and not a.keep:
                        shutil.rmtree(work, ignore_errors=True)
                    elif not ok:
                        log(f'  kept {work} for inspection')
        return results, details, time.monotonic() - t_start


def fmt(v):
    if v is None:
        return 'n/a'
    if v >= 1000:
        return f'{v:,.0f}'
    if v >= 100:
        return f'{v:.0f}'
    if abs(v) < 1:
        return f'{v:.3f}'
    return f'{v:.1f}'


def brief(d):
    if not d:
        return ''
    keys = ['p50_ms', 'direct_p50_ms', 'direct_rps', 'p99_ms', 'non2xx', 'conn_errors', 'reconnects', 'errors', 'notified', 'put_ms',
            'preload_rps', 'key_after_restart', 'killed', 'new_leader', 'timeout_or_refused', 'members',
            'rss0_mb', 'rss1_mb', 'setup_s', 'closed_by_server', 'nofile']
    return ' '.join(f'{k}={d[k]}' for k in keys if k in d)


def median(xs):
    return statistics.median(xs) if xs else None


def table(results, details, args):
    hdr = ['figure', 'unit', 'ours', 'etcd', 'ours/etcd', 'better', 'target', 'result', 'etcd(issue)']
    rows = []
    for key, label, unit, better, target, issue in ROWS:
        if key not in results:
            continue
        agg = max if key in MAX_ROWS else median
        o = agg(results[key].get('ours', [])) if results[key].get('ours') else None
        e = agg(results[key].get('etcd', [])) if results[key].get('etcd') else None
        ratio = o / e if (o is not None and e) else None
        if target is None:
            verdict = '-'
        elif ratio is None:
            verdict = 'n/a'
        else:
            op, bound, _ = target
            verdict = 'PASS' if (ratio >= bound if op == '>=' else ratio <= bound) else 'FAIL'
        # flag runs that had errors: the figure is then suspect
        errs = 0
        for impl in ('ours', 'etcd'):
            if key in MAX_ROWS or key == 'cl_failover':
                break       # failed writes during a failover are what is being measured
            for d in details.get(key, {}).get(impl, []):
                errs += d.get('non2xx', 0) + d.get('conn_errors', 0) + d.get('errors', 0)
        if errs:
            verdict += f' ({errs} errors)'
        rows.append([label, unit, fmt(o), fmt(e), f'{ratio:.2f}' if ratio is not None else 'n/a',
                     better, target[2] if target else '-', verdict, issue])
    w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
    out = []
    line = '  '.join(h.ljust(w[i]) for i, h in enumerate(hdr))
    out.append(line)
    out.append('-' * len(line))
    for r in rows:
        out.append('  '.join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    return '\n'.join(out)


def latency_table(details):
    out = ['', 'latency of the throughput figures (median over rounds, ms): p50 / p99']
    for key, label, *_ in ROWS:
        if key not in details or not key.replace('cl_', '').split('_')[0] in ('put', 'get', 'mixed'):
            continue
        cells = []
        for impl in ('ours', 'etcd'):
            ds = [d for d in details[key].get(impl, []) if 'p50_ms' in d]
            ms = [d['members'] for d in details[key].get(impl, []) if 'members' in d]
            if ms and not ds:       # cl_put_c1: one run per member, shown per member (last round)
                cells.append(f'{impl} {ms[-1]}')
                continue
            if not ds:
                cells.append(f'{impl} n/a')
                continue
            p50 = median([d['p50_ms'] for d in ds])
            p99 = median([d['p99_ms'] for d in ds])
            cells.append(f'{impl} {p50:.2f} / {p99:.2f}')
        out.append(f'  {label:20s} ' + '   '.join(cells))
    return '\n'.join(out) if len(out) > 2 else ''


def issue10_table(results, details):
    """One table of issue 10's figures: figure, ours, etcd, ratio (ours/etcd), target, PASS/FAIL."""
    def med(key, impl):
        v = results.get(key, {}).get(impl)
        return median(v) if v else None

    hdr = ['figure', 'unit', 'ours', 'etcd', 'ratio', 'target', 'result']
    rows = []
    bare = med('bare_get_c64', 'ours')
    for key, label, unit, target in ISSUE10_ROWS:
        if key == 'get_c64_bare':       # derived: each implementation's GET c=64 as % of the bare one
            o, e = (100.0 * med('get_c64', i) / bare if (bare and med('get_c64', i) is not None) else None
                    for i in ('ours', 'etcd'))
            errs = 0
        else:
            o, e = med(key, 'ours'), (None if key == 'bare_get_c64' else med(key, 'etcd'))
            errs = sum(d.get('non2xx', 0) + d.get('conn_errors', 0) + d.get('errors', 0)
                       for impl in ('ours', 'etcd') for d in details.get(key, {}).get(impl, []))
        ratio = o / e if (o is not None and e) else None
        if target is None:
            verdict = '-'
        else:
            on, op, bound, _ = target
            v = ratio if on == 'ratio' else o
            if v is None:
                verdict = 'n/a'
            else:
                verdict = 'PASS' if (v >= bound if op == '>=' else v <= bound) else 'FAIL'
        if errs:
            verdict += f' ({errs} errors)'
        rows.append([label, unit, fmt(o), '-' if key == 'bare_get_c64' else fmt(e),
                     f'{ratio:.2f}' if ratio is not None else ('-' if key == 'bare_get_c64' else 'n/a'),
                     target[3] if target else '-', verdict])
    w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
    line = '  '.join(h.ljust(w[i]) for i, h in enumerate(hdr))
    out = [line, '-' * len(line)]
    for r in rows:
        out.append('  '.join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    return '\n'.join(out)


def issue11_table(results, details):
    """TLS figures next to their plain twins: ours, etcd, ratio ours/etcd, and per implementation the
    TLS figure as a fraction of the plain one (the cost of TLS)."""
    def med(key, impl):
        v = results.get(key, {}).get(impl)
        return median(v) if v else None

    hdr = ['figure', 'ours req/s', 'etcd req/s', 'ours/etcd', 'ours TLS/plain', 'etcd TLS/plain', 'errors']
    rows = []
    for key, label, twin in ISSUE11_ROWS:
        if key not in results:
            continue
        o, e = med(key, 'ours'), med(key, 'etcd')
        cost = []
        for impl, v in (('ours', o), ('etcd', e)):
            p = med(twin, impl) if twin else None
            cost.append(f'{v / p:.2f}' if (v is not None and p) else '-')
        errs = sum(d.get('non2xx', 0) + d.get('conn_errors', 0)
                   for impl in ('ours', 'etcd') for d in details.get(key, {}).get(impl, []))
        rows.append([label, fmt(o), fmt(e), f'{o / e:.2f}' if (o is not None and e) else 'n/a',
                     cost[0], cost[1], str(errs)])
    w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
    line = '  '.join(h.ljust(w[i]) for i, h in enumerate(hdr))
    out = [line, '-' * len(line)]
    for r in rows:
        out.append('  '.join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    return '\n'.join(out)


def proxy_targets(results):
    """The issue's absolute proxy targets for ours: < 0.1 ms added at p50 (c=1), >= 80 % of direct (c=64)."""
    def ours(key):
        v = results.get(key, {}).get('ours')
        return median(v) if v else None
    out = ['', 'proxy targets (ours): added p50 at c=1 < 0.1 ms, >= 80 % of direct throughput at c=64, ahead of etcd']
    for key, bound, op, unit in (('px_get_c1_added', 0.1, '<', 'ms'), ('px_get_c64_frac', 80.0, '>=', '%'),
                                 ('px_put_c64_frac', 80.0, '>=', '%')):
        v = ours(key)
        ok = v is not None and (v < bound if op == '<' else v >= bound)
        out.append(f'  {key:16s} {fmt(v)} {unit} (target {op} {bound:g}) '
                   f'-> {"PASS" if ok else "FAIL"}')
    return '\n'.join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=1, help='interleaved rounds per figure; median is reported')
    ap.add_argument('--duration', type=float, default=5.0, help='seconds per throughput figure')
    ap.add_argument('--size', type=int, default=256, help='value size in bytes for PUTs')
    ap.add_argument('--keys', type=int, default=10000, help='preloaded keys for GET / mixed')
    ap.add_argument('--big-keys', type=int, default=100000, help='keys for the RSS / restart figures')
    ap.add_argument('--watchers', type=int, default=1000)
    ap.add_argument('--settle', type=float, default=2.0, help='seconds to settle before reading RSS')
    ap.add_argument('--groups', default=','.join(GROUPS),
                    help='comma list of figure groups: ' + ','.join(GROUPS) + ' (default), '
                         + ','.join(CL_GROUPS + PX_GROUPS + IDLE_GROUPS))
    ap.add_argument('--cluster', type=int, choices=(3,), default=None,
                    help='run the 3-member cluster groups (' + ','.join(CL_GROUPS) + ') instead of the '
                         'single-member default (same as --groups with those)')
    ap.add_argument('--proxy-bench', action='store_true',
                    help='run the proxy group (' + ','.join(PX_GROUPS) + '): a proxy of each implementation in '
                         'front of a 3-member cluster, against direct access')
    ap.add_argument('--issue10', action='store_true',
                    help='exactly issue 10\'s figures (' + ','.join(ISSUE10_GROUPS) + ', with the bare '
                         'responder in get_c64; the proxy group only its GET c=64) and one table')
    ap.add_argument('--issue11', action='store_true',
                    help='the cost of TLS (' + ','.join(ISSUE11_GROUPS) + '): PUT and GET c=64 with and '
                         'without client TLS, 3-member PUT c=64 with peer TLS, ours and etcd interleaved')
    ap.add_argument('--bare', action='store_true',
                    help='get_c64: the bare responder (loadgen --mode serve) takes the same load in each round')
    ap.add_argument('--idle-conns', type=int, default=10000,
                    help='idle10k: idle keep-alive connections to open (default 10000)')
    ap.add_argument('--failover-reps', type=int, default=3,
                    help='cl_failover: fresh clusters (kills) per implementation (at least --rounds)')
    ap.add_argument('--failover-timeout', type=float, default=0.2,
                    help='cl_failover: client timeout of each PUT after the kill, s (the resolution)')
    ap.add_argument('--failover-warmup', type=float, default=1.0,
                    help='cl_failover: seconds of writes before the kill')
    ap.add_argument('--lost-rounds', type=int, default=10, help='cl_lost: kill -9 / restart rounds')
    ap.add_argument('--lost-writers', type=int, default=6, help='cl_lost: concurrent writer threads')
    ap.add_argument('--lost-pause', type=float, default=1.0,
                    help='cl_lost: seconds of writes between a restart and the next kill')
    ap.add_argument('--impls', default='ours,etcd', help='ours,etcd (default) or just one of them')
    ap.add_argument('--etcd2', default=os.environ.get('ETCD2_BINARY', os.path.join(REPO, 'build/daemon/etcd2')))
    ap.add_argument('--etcd', default=os.environ.get('ETCD_BINARY', '/usr/bin/etcd'))
    ap.add_argument('--loadgen', default=os.environ.get('LOADGEN_BINARY'),
                    help='loadgen binary (default: compile tests/bench/loadgen.c with cc -O2)')
    ap.add_argument('--tmpdir', default=os.environ.get('BENCH_TMPDIR', '/var/tmp'),
                    help='parent of the per-run data dirs (one disk for both servers)')
    ap.add_argument('--keep', action='store_true', help='keep data dirs and logs')
    ap.add_argument('--json', help='also write all raw results to this file')
    args = ap.parse_args()

    args.groups = [g for g in args.groups.split(',') if g]
    if args.cluster and not (args.groups and all(g in CL_GROUPS for g in args.groups)):
        args.groups = list(CL_GROUPS)   # --cluster 3 alone: all cluster groups; else the cl_* named
    if args.proxy_bench:
        args.groups = list(PX_GROUPS)
    if args.issue10:
        args.groups = list(ISSUE10_GROUPS)
        args.bare = True
    if args.issue11:
        args.groups = list(ISSUE11_GROUPS)
    for g in args.groups:
        if g not in GROUPS + CL_GROUPS + PX_GROUPS + IDLE_GROUPS + TLS_GROUPS:
            ap.error(f'unknown group {g}')
    args.etcd2 = os.path.abspath(args.etcd2)     # the servers run with their work dir as cwd
    args.etcd = os.path.abspath(args.etcd)
    args.tmpdir = os.path.abspath(args.tmpdir)
    if args.loadgen:
        args.loadgen = os.path.abspath(args.loadgen)
    args.impls = [i for i in args.impls.split(',') if i]
    for i in args.impls:
        if i not in ('ours', 'etcd'):
            ap.error(f'unknown impl {i}')
    if 'ours' in args.impls and not os.access(args.etcd2, os.X_OK):
        ap.error(f'our daemon {args.etcd2} is not executable (set ETCD2_BINARY or --impls etcd)')
    if 'etcd' in args.impls and not os.access(args.etcd, os.X_OK):
        ap.error(f'{args.etcd} is not executable')
    os.makedirs(args.tmpdir, exist_ok=True)
    if not args.loadgen:
        args.loadgen = build_loadgen(os.path.join(args.tmpdir, 'etcd2-bench-loadgen'))

    log(f'ours: {args.etcd2}\netcd: {args.etcd}\nloadgen: {args.loadgen}\n'
        f'rounds {args.rounds}, {args.duration:g} s per throughput figure, values {args.size} B')
    bench = Bench(args)
    try:
        results, details, secs = bench.run()
    finally:
        for s in list(running):
            s.stop()

    print(f'etcd2 benchmark: ours = {args.etcd2}, etcd = {args.etcd} (--enable-v2); '
          f'median of {args.rounds} round(s); {args.duration:g} s per throughput figure; '
          f'values {args.size} B; took {secs:.0f} s'
          + (f'; cl_failover: {max(args.rounds, args.failover_reps)} kills per implementation, '
             f'client timeout {args.failover_timeout:g} s' if 'cl_failover' in args.groups else ''))
    print('ratio is always ours/etcd; "better" says whether a higher or lower ratio is better.')
    print(f'load average at the end: {" ".join(f"{x:.2f}" for x in os.getloadavg())} '
          f'(anything else running on the 2 cores skews the figures)')
    if args.issue10:
        print(issue10_table(results, details))
    elif args.issue11:
        print(issue11_table(results, details))
    else:
        print(table(results, details, args))
    print(latency_table(details))
    if 'px' in args.groups and not args.issue10:
        print(proxy_targets(results))
    if 'cl_lost' in args.groups:
        d = bench.lost
        if d is None:
            print('\nzero lost acknowledged writes (ours, 3 members): n/a (failed, see stderr)')
        else:
            ok = d['lost'] == 0 and d['rounds'] == args.lost_rounds and d['acked'] > 0
            print(f'\nzero lost acknowledged writes (ours, 3 members, {args.lost_writers} writers over '
                  f'all members, kill -9 the leader + restart): rounds {d["rounds"]}/{args.lost_rounds}, '
                  f'acknowledged {d["acked"]} of {d["attempts"]} PUTs, lost {d["lost"]} '
                  f'(quorum read on every member) -> {"PASS" if ok else "FAIL"}; writes resumed after a '
                  f'kill in median {fmt(d["resume_median_ms"])} ms, max {fmt(d["resume_max_ms"])} ms')
            if d['lost']:
                print(f'  lost keys (first 5): {d["lost_sample"]}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'details': details, 'lost': bench.lost}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
