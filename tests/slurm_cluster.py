"""A throw-away single-node SLURM cluster on localhost for the tests.

``LocalSlurm(root).start()`` launches ``munged``, ``slurmctld`` and ``slurmd`` as child processes
of the test run, with every file they need (configuration, munge key and socket, state, spool,
logs) under ``root``. Nothing under ``/etc`` is read or written: clients find the cluster through
the ``SLURM_CONF`` variable in :attr:`LocalSlurm.env`. ``stop()`` cancels whatever is still
queued, then ends exactly the three daemons it started, by PID.

The configuration is the container-friendly one: no cgroups (``proctrack/linuxproc``,
``task/none``), no job accounting (``jobacct_gather/none``, ``accounting_storage/none``), and
free TCP ports picked at start-up so two clusters (or a developer's own) can coexist.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel")


def find_program(name):
    """Path of ``name`` on ``PATH`` or in the usual sbin directories, or None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_programs():
    """Names of the SLURM and munge programs this machine lacks (empty when all are there)."""
    return [name for name in (*DAEMONS, *CLIENTS) if find_program(name) is None]


def skip_without_slurm():
    """Skip the calling test when SLURM itself (sbatch, slurmctld) is not installed."""
    import pytest

    missing = [name for name in ("sbatch", "slurmctld") if find_program(name) is None]
    if missing:
        pytest.skip(
            f"SLURM is not installed here ({', '.join(missing)} not found); "
            "install Debian's slurm-wlm and munge to run the SLURM tests"
        )


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _available_memory_mb():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 1024


class LocalSlurm:
    """Single-node SLURM whose whole state lives in ``root``.

    Parameters
    ----------
    root : path
        Directory for configuration, state, spool and logs; created if needed.
    cpus : int, optional
        CPUs the node advertises; defaults to ``os.cpu_count()``.
    startup_timeout : float
        Seconds to wait for the node to become idle before giving up (with the logs' tail).
    config : mapping, optional
        More ``slurm.conf`` settings, e.g. ``{"MaxArraySize": 4}`` (they win over ours).
    """

    def __init__(self, root, cpus=None, startup_timeout=60.0, config=None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.startup_timeout = startup_timeout
        self.extra_config = dict(config or {})
        self.processes = {}
        self.startup_seconds = None
        self.conf = self.root / "slurm.conf"
        self.log_dir = self.root / "log"
        self.munge_socket = self.root / "munge" / "munge.socket"

    @property
    def env(self):
        """Environment for clients of this cluster (copy of ``os.environ`` plus SLURM_CONF)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN_DIRS])
        return env

    def pids(self):
        """PIDs of the daemons this object started, by daemon name."""
        return {name: proc.pid for name, proc in self.processes.items()}

    # -- start ----------------------------------------------------------------------------------
    def start(self):
        """Start munged, slurmctld and slurmd, and wait until the node is idle."""
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"SLURM/munge programs not installed: {', '.join(missing)}")
        started = time.monotonic()
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge()
            self._write_config()
            self._spawn("slurmctld", [find_program("slurmctld"), "-D", "-i"])
            self._spawn("slurmd", [find_program("slurmd"), "-D", "-N", "localhost"])
            self._wait_until_idle()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _spawn(self, name, command):
        # the daemon keeps its own copy of the log's descriptor
        with open(self.log_dir / f"{name}.out", "ab") as log:
            self.processes[name] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                # own session: Ctrl-C reaches pytest only, whose teardown then stops us by PID
                start_new_session=True,
            )

    def _start_munge(self):
        munge_dir = self.root / "munge"
        munge_dir.chmod(0o700)
        key = munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(
            "munged",
            [
                find_program("munged"),
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                f"--log-file={self.log_dir / 'munged.log'}",
            ],
        )
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            if self.processes["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def _write_config(self):
        user = _current_user()
        memory_mb = max(256, _available_memory_mb() * 3 // 4)
        settings = {
            "ClusterName": "maskerwf",
            "SlurmctldHost": "localhost",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "SlurmUser": user,
            "SlurmdUser": user,
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pidfile",
            "SlurmdPidFile": self.root / "slurmd.pidfile",
            "SlurmctldLogFile": self.log_dir / "slurmctld.log",
            "SlurmdLogFile": self.log_dir / "slurmd.log",
            # containers rarely grant cgroups: track processes through /proc, no task binding
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            # cores only: with memory as a resource, jobs without --mem take the whole node
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "SchedulerType": "sched/backfill",
            # schedule and report quickly: test jobs last seconds
            "SchedulerParameters": "sched_interval=1",
            "MessageTimeout": 10,
            # finished jobs stay visible to scontrol for 5 minutes (we have no accounting)
            "MinJobAge": 300,
            "ReturnToService": 2,
            "NodeName": f"localhost CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN",
            "PartitionName": "debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            **self.extra_config,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def _wait_until_idle(self):
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail()}")
            state = self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
            if state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"SLURM node not idle after {self.startup_timeout:.0f} s:\n{self.log_tail()}"
        )

    # -- use ------------------------------------------------------------------------------------
    def run(self, command, check=True, **kwargs):
        """Run a SLURM client command against this cluster and return the CompletedProcess."""
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, check=check, **kwargs
        )

    def log_tail(self, n_lines=15):
        """Last lines of every daemon log, for error messages."""
        parts = []
        for log in sorted(self.log_dir.glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-n_lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- stop -----------------------------------------------------------------------------------
    def stop(self, timeout=10.0):
        """Cancel leftover jobs, then end the daemons this object started, by PID."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run(["scancel", "--full", f"--user={_current_user()}"], check=False, timeout=20)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                queue = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=20)
                if queue.returncode or not queue.stdout.strip():
                    break
                time.sleep(0.2)
        # slurmd first (it reports to slurmctld), munged last (both authenticate through it)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def _current_user():
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
