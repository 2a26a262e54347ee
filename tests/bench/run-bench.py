#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Compare our etcd2 against etcd 3.4 (--enable-v2) on the v2 keys API.

Every figure gets a fresh single-member server with its own data dir; runs are interleaved
(ours, etcd, ours, etcd, ...) for --rounds rounds and the median is reported. Only 127.0.0.1.
Run on demand, never from `meson test`. See tests/bench/README.md.
"""

import argparse
import http.client
import json
import os
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
]

# Figure groups: one fresh server per group and round; a group yields one or more rows.
GROUPS = ['put_c1', 'put_c16', 'put_c64', 'put_c256', 'get_c64', 'mixed_c64', 'watch',
          'rss_idle', 'keys100k']

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

    def argv(self):
        c = f'http://127.0.0.1:{self.client_port}'
        p = f'http://127.0.0.1:{self.peer_port}'
        a = [self.binary,
             '--name', 'bench',
             '--data-dir', self.datadir,
             '--listen-client-urls', c,
             '--advertise-client-urls', c,
             '--listen-peer-urls', p,
             '--initial-advertise-peer-urls', p,
             '--initial-cluster', f'bench={p}']
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
                log(f'{self.impl}: no exit {timeout:.0f} s after SIGTERM, killing')
                self.proc.kill()
                self.proc.wait()
        if self in running:
            running.remove(self)
        self.proc = None
        self.logf.close()


def build_loadgen(out):
    src = os.path.join(HERE, 'loadgen.c')
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    cmd = ['cc', '-O2', '-Wall', '-Wextra', '-o', out, src]
    log('building loadgen: ' + ' '.join(cmd))
    subprocess.run(cmd, check=True)
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.loadgen = args.loadgen

    def lg(self, srv, *extra, timeout=None):
        cmd = [self.loadgen, '--port', str(srv.client_port), *map(str, extra)]
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
        raise ValueError(group)

    def run(self):
        a = self.args
        impls = [i for i in ('ours', 'etcd') if i in a.impls]
        binaries = {'ours': a.etcd2, 'etcd': a.etcd}
        results = {}     # row -> impl -> [values]
        details = {}     # row -> impl -> [detail dicts]
        t_start = time.monotonic()
        for group in a.groups:
            for rnd in range(a.rounds):
                for impl in impls:
                    work = tempfile.mkdtemp(prefix=f'bench-{impl}-{group}-', dir=a.tmpdir)
                    srv = Server(impl, binaries[impl], work)
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
                        results.setdefault(row, {}).setdefault(impl, []).append(v)
                        details.setdefault(row, {}).setdefault(impl, []).append(d)
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
    return f'{v:.1f}'


def brief(d):
    if not d:
        return ''
    keys = ['p50_ms', 'p99_ms', 'non2xx', 'conn_errors', 'reconnects', 'errors', 'notified', 'put_ms',
            'preload_rps', 'key_after_restart']
    return ' '.join(f'{k}={d[k]}' for k in keys if k in d)


def median(xs):
    return statistics.median(xs) if xs else None


def table(results, details, args):
    hdr = ['figure', 'unit', 'ours', 'etcd', 'ours/etcd', 'better', 'target', 'result', 'etcd(issue)']
    rows = []
    for key, label, unit, better, target, issue in ROWS:
        if key not in results:
            continue
        o = median(results[key].get('ours', []))
        e = median(results[key].get('etcd', []))
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
        if key not in details or not key.split('_')[0] in ('put', 'get', 'mixed'):
            continue
        cells = []
        for impl in ('ours', 'etcd'):
            ds = [d for d in details[key].get(impl, []) if 'p50_ms' in d]
            if not ds:
                cells.append(f'{impl} n/a')
                continue
            p50 = median([d['p50_ms'] for d in ds])
            p99 = median([d['p99_ms'] for d in ds])
            cells.append(f'{impl} {p50:.2f} / {p99:.2f}')
        out.append(f'  {label:20s} ' + '   '.join(cells))
    return '\n'.join(out) if len(out) > 2 else ''


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
                    help='comma list of figure groups: ' + ','.join(GROUPS))
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
    for g in args.groups:
        if g not in GROUPS:
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
    try:
        results, details, secs = Bench(args).run()
    finally:
        for s in list(running):
            s.stop()

    print(f'etcd2 benchmark: ours = {args.etcd2}, etcd = {args.etcd} (--enable-v2); '
          f'median of {args.rounds} round(s); {args.duration:g} s per throughput figure; '
          f'values {args.size} B; took {secs:.0f} s')
    print('ratio is always ours/etcd; "better" says whether a higher or lower ratio is better.')
    print(f'load average at the end: {" ".join(f"{x:.2f}" for x in os.getloadavg())} '
          f'(anything else running on the 2 cores skews the figures)')
    print(table(results, details, args))
    print(latency_table(details))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'details': details}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
