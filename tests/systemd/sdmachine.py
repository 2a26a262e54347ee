# SPDX-License-Identifier: Apache-2.0
"""sdmachine - real systemd as PID 1 of a private PID/mount/UTS/IPC/network namespace, with etcd2 installed.

The harness stages `meson install --destdir` of the build under test, runs systemd-sysusers on private
copies of the user database, and boots /lib/systemd/systemd inside `unshare` (ns-init.sh does the mounts).
systemd sees only /run/systemd/system (our installed units, copies of journald's and dbus's units, test
drop-ins) and /run/systemd/generator; generators come only from /run/etcd2-test/generators. The launcher
lives in its own cgroup; teardown is always `kill -KILL` of the namespace's PID 1, then removal of the
cgroup folders and of the work dir. Commands run inside through `nsenter -t PID1 -p -m -n -u -i`.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMD = "/lib/systemd/systemd"
HOST_UNITS = "/lib/systemd/system"
# Hybrid hierarchy (this machine): name=systemd v1 plus the unified v2 mount; pure v2: /sys/fs/cgroup.
if os.path.isdir("/sys/fs/cgroup/systemd"):
    CGROUP_ROOTS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
elif os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
    CGROUP_ROOTS = ("/sys/fs/cgroup",)
else:
    CGROUP_ROOTS = ()

# What the namespace's systemd must never do on this host: account, or wait long for anything.
SYSTEM_CONF = """[Manager]
DefaultCPUAccounting=no
DefaultIOAccounting=no
DefaultIPAccounting=no
DefaultBlockIOAccounting=no
DefaultMemoryAccounting=no
DefaultTasksAccounting=no
DefaultTimeoutStartSec=30s
DefaultTimeoutStopSec=15s
"""

TARGET = """[Unit]
Description=etcd2 systemd test target
DefaultDependencies=no
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service dbus.socket
After=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service dbus.socket
"""

NO_DEFAULT_DEPS = "[Unit]\nDefaultDependencies=no\n"

# Restart quickly in tests (the unit's 10 s is for real machines); everything else as installed.
SERVICE_TEST_DROPIN = """[Unit]
DefaultDependencies=no
[Service]
RestartSec=1s
"""


def why_not_runnable():
    """None if this machine can run the tests, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root (unshare of PID/mount namespaces, cgroups)"
    for tool in ("unshare", "nsenter", "setpriv", "ip", "curl", "busctl", "journalctl", "systemctl",
                 "systemd-sysusers", "dbus-daemon"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not available"
    if not CGROUP_ROOTS:
        return "no name=systemd or cgroup2 hierarchy under /sys/fs/cgroup"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "overlayfs is not available"
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--net", "true"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return "unshare does not work here: " + r.stderr.strip()
    return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale():
    """Removes what an earlier run killed by SIGKILL left: empty cgroup folders and work dirs of dead pids.
    (Its namespace died with it: setpriv --pdeathsig and unshare --kill-child.)"""
    for root in CGROUP_ROOTS:
        if not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            # etcd2-sdtest-<pid>, or etcd2-sdtest-<pid>-<n> for one of several machines of one test.
            pid = name[13:].split("-")[0]
            if not name.startswith("etcd2-sdtest-") or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            for sub, dirs, _ in os.walk(os.path.join(root, name), topdown=False):
                for d in dirs:
                    try:
                        os.rmdir(os.path.join(sub, d))
                    except OSError:
                        pass
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                pass
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        parts = name.split("-")
        if name.startswith("etcd2-sd-") and len(parts) >= 4 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


class CommandFailed(AssertionError):
    pass


class NetNS:
    """A network namespace of the test's own (loopback up), held by a `sleep` in it, for several Machines to
    share (Machine(netns=...)). Dies with this process (setpriv --pdeathsig); teardown() kills it."""

    def __init__(self):
        self.holder = None

    def start(self, timeout=10):
        self.holder = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "unshare", "--net", "--",
             "sh", "-c", "ip link set lo up && exec sleep infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError(f"unshare --net exited: {self.holder.stderr.read().decode(errors='replace')}")
            try:
                # The holder is `sleep` in the new namespace once unshare and sh have exec'ed.
                with open(f"/proc/{self.holder.pid}/comm") as f:
                    comm = f.read().strip()
                if comm == "sleep" and os.readlink(f"/proc/{self.holder.pid}/ns/net") != mine:
                    return self
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError("the network namespace holder did not come up")

    @property
    def path(self):
        return f"/proc/{self.holder.pid}/ns/net"

    def teardown(self):
        if self.holder:
            try:
                os.killpg(self.holder.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if self.holder.stderr:
                self.holder.stderr.close()
        self.holder = None


class Machine:
    def __init__(self, build_root, name=None, cloud_config=None, environment=None, netns=None):
        """netns: a NetNS (or the path of a network namespace) to run in instead of a network namespace of
        its own; several machines can then reach each other on 127.0.0.1."""
        self.build_root = os.path.abspath(build_root)
        self.name = name or f"etcd2-sdtest-{os.getpid()}"
        self.netns = netns
        self.cloud_config = cloud_config
        self.environment = environment
        self.workdir = None
        self.launcher = None
        self.pid1 = None
        self.logf = None
        self.installed = {}
        self.prefix = None

    # ---------------------------------------------------------------- staging
    def _installed_path(self, basename, contains=""):
        for dst in self.installed.values():
            if os.path.basename(dst) == basename and contains in dst:
                return dst
        return None

    def stage(self):
        cleanup_stale()
        self.workdir = tempfile.mkdtemp(prefix=f"etcd2-sd-{os.getpid()}-")
        w = self.workdir
        dest = os.path.join(w, "dest")
        subprocess.run(["meson", "install", "-C", self.build_root, "--destdir", dest, "--no-rebuild",
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
        self.installed = json.loads(subprocess.run(["meson", "introspect", "--installed", self.build_root],
                                                   check=True, capture_output=True, text=True).stdout)
        opts = json.loads(subprocess.run(["meson", "introspect", "--buildoptions", self.build_root],
                                         check=True, capture_output=True, text=True).stdout)
        self.prefix = next(o["value"] for o in opts if o["name"] == "prefix")

        unit = self._installed_path("etcd2.service")
        policy = self._installed_path("io.etcd.etcd2.conf", "dbus-1")
        sysusers = self._installed_path("etcd2.conf", "sysusers")
        generator = self._installed_path("etcd2-cloudinit-generator")
        if not unit or not policy or not sysusers:
            raise RuntimeError(f"meson install did not lay out the unit/policy/sysusers files: {self.installed}")
        for p in (unit, policy, sysusers):
            if not p.startswith(self.prefix + "/"):
                raise RuntimeError(f"{p} is outside the prefix {self.prefix}: cannot overlay it")
        self.unitdir = os.path.dirname(unit)
        self.policy = policy
        self.generator = generator

        os.makedirs(os.path.join(w, "data"))
        os.chmod(os.path.join(w, "data"), 0o755)

        # The user database: copies of the host's, then the installed sysusers.d file applied to them.
        os.makedirs(os.path.join(w, "etc"))
        for f in ("passwd", "group", "shadow", "gshadow"):
            if os.path.exists("/etc/" + f):
                shutil.copy2("/etc/" + f, os.path.join(w, "etc", f))
        with open(dest + sysusers) as f:
            subprocess.run(["systemd-sysusers", "--root=" + w, "-"], stdin=f, check=True,
                           capture_output=True)
        # /etc/environment (COREOS_*_IPV4 for the generator) is ours too; the tests rewrite it in place.
        with open(os.path.join(w, "etc", "environment"), "w") as f:
            f.write(self.environment or "")
        if self.cloud_config is not None:
            self.set_cloud_config(self.cloud_config)

        run = os.path.join(w, "run")
        units = os.path.join(run, "systemd", "system")
        os.makedirs(units)
        for dst in self.installed.values():
            if os.path.dirname(dst) == self.unitdir:
                shutil.copy2(dest + dst, units)
        for u in ("systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
                  "dbus.socket", "dbus.service"):
            shutil.copy2(os.path.join(HOST_UNITS, u), units)
        # No audit socket in a container.
        jsvc = os.path.join(units, "systemd-journald.service")
        with open(jsvc) as f:
            text = f.read().replace(" systemd-journald-audit.socket", "")
        with open(jsvc, "w") as f:
            f.write(text)
        self.write(units, "etcd2-test.target", TARGET)
        self.write(units, "etcd2.service.d/50-test.conf", SERVICE_TEST_DROPIN)
        for u in ("etcd2.socket", "etcd2-peer.socket", "dbus.socket"):
            self.write(units, u + ".d/50-test.conf", NO_DEFAULT_DEPS)

        # The system bus: Debian's system.conf plus the directory our policy was installed into.
        self.write(run, "etcd2-test/dbus-system.conf",
                   '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"\n'
                   ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
                   "<busconfig>\n"
                   "  <include>/usr/share/dbus-1/system.conf</include>\n"
                   f"  <includedir>{os.path.dirname(policy)}</includedir>\n"
                   "</busconfig>\n")
        self.write(units, "dbus.service.d/50-test.conf",
                   NO_DEFAULT_DEPS +
                   "[Service]\nExecStart=\nExecStart=/usr/bin/dbus-daemon "
                   "--config-file=/run/etcd2-test/dbus-system.conf --address=systemd: --nofork --nopidfile "
                   "--systemd-activation --syslog-only\n")

        self.write(run, "systemd/system.conf.d/50-test.conf", SYSTEM_CONF)
        self.write(run, "systemd/journald.conf.d/50-test.conf", "[Journal]\nStorage=volatile\nReadKMsg=no\n")
        gens = os.path.join(run, "etcd2-test", "generators")
        os.makedirs(gens)
        if generator:
            os.symlink(generator, os.path.join(gens, os.path.basename(generator)))

    def set_cloud_config(self, text):
        """The cloud-config the generator reads ($ETCD2_CLOUD_CONFIG in PID 1's environment); None removes it."""
        path = os.path.join(self.workdir, "cloud-config.yml")
        if text is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            with open(path, "w") as f:
                f.write(text)

    def set_environment(self, text):
        """Rewrites the namespace's /etc/environment in place (it is a bind mount of this file)."""
        with open(os.path.join(self.workdir, "etc", "environment"), "w") as f:
            f.write(text)

    @staticmethod
    def write(base, rel, text):
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    # ---------------------------------------------------------------- boot / teardown
    def _cgroup_dirs(self):
        return [os.path.join(root, self.name) for root in CGROUP_ROOTS if os.path.isdir(root)]

    def boot(self, timeout=30):
        for d in self._cgroup_dirs():
            os.makedirs(d, exist_ok=True)
        self.logf = open(os.path.join(self.workdir, "pid1.log"), "w")
        join = " ".join(f'echo $$ > {d}/cgroup.procs;' for d in self._cgroup_dirs())
        # setpriv --pdeathsig: if this Python process dies (even by SIGKILL), unshare gets SIGKILL, and
        # unshare --kill-child then SIGKILLs the namespace's PID 1.
        if self.netns is None:
            join_net, own_net = "", "--net"
        else:
            path = self.netns.path if isinstance(self.netns, NetNS) else self.netns
            join_net, own_net = f"nsenter --net={path} -- ", ""
        script = (f"{join} exec {join_net}setpriv --pdeathsig KILL unshare --pid --fork --kill-child=KILL --mount "
                  f"--mount-proc --uts --ipc {own_net} {HERE}/ns-init.sh {self.workdir} {self.prefix}")
        self.launcher = subprocess.Popen(["/bin/sh", "-c", script], stdout=self.logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.pid1 is None:
            if self.launcher.poll() is not None:
                raise RuntimeError(f"the namespace exited at once: {self.log()}")
            self.pid1 = self._find_pid1()
            if time.monotonic() > deadline:
                raise RuntimeError("no PID 1 in the namespace")
            time.sleep(0.02)
        state = ""
        while time.monotonic() < deadline:
            if self.launcher.poll() is not None:
                raise RuntimeError(f"systemd exited: {self.log()}")
            r = self.run(["systemctl", "is-system-running"], check=False)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.05)
        raise RuntimeError(f"systemd did not reach running (state {state!r}): {self.log()}")

    def _find_pid1(self):
        """The child of unshare whose PID namespace differs from ours."""
        mine = os.readlink("/proc/self/ns/pid")
        try:
            for task in os.listdir(f"/proc/{self.launcher.pid}/task"):
                with open(f"/proc/{self.launcher.pid}/task/{task}/children") as f:
                    for pid in f.read().split():
                        if os.readlink(f"/proc/{pid}/ns/pid") != mine:
                            return int(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
        return None

    def log(self):
        try:
            with open(os.path.join(self.workdir, "pid1.log")) as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def teardown(self):
        if self.pid1:
            try:
                os.kill(self.pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.launcher:
            try:
                os.killpg(self.launcher.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.launcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Every process of the namespace dies with its PID 1; then the cgroup folders can go, deepest first.
        deadline = time.monotonic() + 10
        for d in self._cgroup_dirs():
            while os.path.isdir(d) and time.monotonic() < deadline:
                for root, dirs, _ in os.walk(d, topdown=False):
                    for sub in dirs:
                        try:
                            os.rmdir(os.path.join(root, sub))
                        except OSError:
                            pass
                try:
                    os.rmdir(d)
                except OSError:
                    time.sleep(0.05)
        if self.logf:
            self.logf.close()
        if self.workdir and os.environ.get("ETCD2_SD_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.pid1 = None
        self.launcher = None

    # ---------------------------------------------------------------- talking to it
    def nsenter(self, cmd, user=None):
        pre = ["nsenter", "-t", str(self.pid1), "-p", "-m", "-n", "-u", "-i", "--"]
        if user:
            pre += ["setpriv", f"--reuid={user}", f"--regid={user}", "--inh-caps=-all", "--clear-groups", "--"]
        return pre + list(cmd)

    def run(self, cmd, check=True, user=None, timeout=30, input=None):
        r = subprocess.run(self.nsenter(cmd, user), capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise CommandFailed(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def systemctl(self, *args, check=True):
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def prop(self, unit, name):
        return self.systemctl("show", "-P", name, unit).stdout.strip()

    def http(self, method, url, data=None, timeout=10):
        """(status, body) of one HTTP request made inside the namespace's network."""
        cmd = ["curl", "-sS", "-m", str(timeout), "-X", method, "-o", "-", "-w", "\n%{http_code}"]
        for k, v in (data or {}).items():
            cmd += ["--data-urlencode", f"{k}={v}"]
        r = self.run(cmd + [url], check=False, timeout=timeout + 5)
        if r.returncode != 0:
            return None, r.stderr
        body, _, code = r.stdout.rpartition("\n")
        return int(code), body

    def kmsg(self):
        """What the namespace wrote to /dev/kmsg (bind-mounted to a file by ns-init.sh)."""
        with open(os.path.join(self.workdir, "kmsg"), errors="replace") as f:
            return f.read()

    def journal(self, *args):
        r = self.run(["journalctl", "--directory=/run/log/journal", "--no-pager", *args], check=False)
        return r.stdout

    def wait_for(self, what, pred, timeout=20, interval=0.1):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = pred()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
