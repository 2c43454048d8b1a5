#!/usr/bin/env python3
"""Chaos across containers: a compose cluster of haseqd under the faults operators meet.

    deploy/docker/chaos.py                       # 3 nodes, every scenario
    deploy/docker/chaos.py --nodes 5             # 5 nodes (docker-compose.5.yml)
    deploy/docker/chaos.py --scenarios kill,pause --kills 5
    deploy/docker/chaos.py --report out.json     # the figures, as JSON

Brings up deploy/docker/docker-compose.yml (or .5.yml) from the image haseqd:local
(deploy/docker/build-image.sh makes it; --binary PATH builds it first) under a compose
project of its own, with 250 ms blocks and the operator guide's timings, and runs:

  kill        the leader SIGKILLed (`docker kill`) --kills times (20 by default), restarted
              after each; the production gap of each kill (kill -> first block of another
              proposer, seen on a survivor) is recorded
  pause       the leader frozen (`docker pause`) past its lease, then thawed: the others elect
              and produce meanwhile; the thawed node follows, nothing it held is canonical
  disconnect  the leader's raft network cut (`docker network disconnect`), then reconnected
  partition   packets dropped (iptables in the containers' network namespaces): the leader
              on the minority side (the majority elects; healed, the old leader follows), and
              a minority of followers cut off (the leader keeps its term; healed, pre-vote
              keeps the term unchanged)
  rolling     every node restarted by SIGTERM in turn (`docker stop`), twice around: the
              leader hands over first, so each gap stays near a block time
  crash       every container SIGKILLed at once, then started: the cluster resumes and every
              block committed before the crash is still there
  latency     a fresh cluster whose timings follow the guide's formulas for RTT_MAX 500 ms,
              one node's link delayed 200-500 ms (its frames held by deploy/netns/slow-link.py
              between two TAP devices, as netem would); the leader killed --latency-kills
              times: the election time of each is recorded

After every step it checks DESIGN's safety properties across the nodes: S1 no fork (every
node's block at a height has the same hash, and each block's parent is the block below it),
S2 nothing committed lost (a block seen committed stays, across kills and the whole-cluster
crash), S3 no uncommitted block canonical (each engine's head is a committed block), and
that production goes on. Every wait is bounded; the compose project, its volumes, networks,
bridges and relays are removed on exit, pass or fail. Exit 0 if all passed, 1 on a failed
check (with the last log lines of each node), 2 on a usage or environment problem. Needs root
(nsenter, ip) for partition and latency; talks to the nodes only through their API ports,
published on 127.0.0.1.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SLOW_LINK = os.path.join(REPO, "deploy", "netns", "slow-link.py")

BLOCK_TIME_MS = 250
# The guide's recommended timings (RTT_MAX <= 23 ms), as in haseq.yaml.
GUIDE_TIMINGS = {"heartbeat": 92, "election": 368, "lease": 46, "send": 50}
# Latency scenario: one node's egress held 200-500 ms; RTT_MAX is then 500 ms and the guide's
# formulas give heartbeat = 4 x RTT_MAX, election = 4 x heartbeat, lease = heartbeat / 2,
# send = 3 x RTT_MAX.
LATENCY_MS = (200, 500)
RTT_MAX_MS = LATENCY_MS[1]
LATENCY_TIMINGS = {
    "heartbeat": 4 * RTT_MAX_MS,
    "election": 16 * RTT_MAX_MS,
    "lease": 2 * RTT_MAX_MS,
    "send": 3 * RTT_MAX_MS,
}
HTTP_TIMEOUT_S = 1.0
POLL_S = 0.025


class CheckFailed(Exception):
    """A safety or liveness check failed: the run fails with this message."""


class EnvProblem(Exception):
    """The machine cannot run this (no docker, not root, ...): exit 2."""


T0 = time.monotonic()


def say(msg):
    now = time.time()
    utc = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
    print(f"[chaos {time.monotonic() - T0:7.1f}s {utc}] {msg}", flush=True)


def run(cmd, check=True, timeout=120, quiet=False):
    """Runs a command; its output, or CheckFailed/EnvProblem naming it."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise EnvProblem(f"{cmd[0]}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise CheckFailed(f"{' '.join(cmd)}: no answer within {timeout} s") from e
    if check and p.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    if not quiet and p.returncode != 0:
        say(f"({' '.join(cmd[:4])} exited {p.returncode}: {p.stderr.strip()[-200:]})")
    return p.stdout


def http_json(port, path, timeout=HTTP_TIMEOUT_S):
    """GET 127.0.0.1:port/path as JSON; None when the node does not answer (or 404)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        e.close()
        return None
    except (OSError, ValueError):
        return None


def wait_for(what, timeout_s, probe, interval=POLL_S):
    """Calls probe() until it returns something truthy (returned), or fails naming what."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {timeout_s} s")
        time.sleep(interval)


def exited(pid):
    """The process is gone, or a zombie (exited; the container runtime reaps it, here up to
    seconds later)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One compose project: its nodes, their API ports, and the committed chain seen so far."""

    def __init__(self, n, image, timings, work, compose):
        self.n = n
        self.names = [f"node-{i}" for i in range(1, n + 1)]
        self.project = f"haseqchaos{os.getpid()}{random.randrange(1000)}"
        self.work = work
        self.compose_cmd = compose
        base = os.path.join(HERE, "docker-compose.yml" if n == 3 else "docker-compose.5.yml")
        self.files = [base, self._override(timings)]
        self.env = dict(os.environ)
        self.env["HASEQ_IMAGE"] = image
        self.env["HASEQ_CLUSTER_SECRET"] = self._secret()
        self.ports = {}
        for i, name in enumerate(self.names, 1):
            self.ports[name] = free_port()
            self.env[f"HASEQ_NODE_{i}_API_PORT"] = str(self.ports[name])
        self.chain = {}  # height -> hash, as committed (S1, S2)
        self.checked = {name: 0 for name in self.names}  # heights compared per node
        self.paused = set()
        self.cids = {}
        self.started = False

    def _override(self, t):
        env = {
            "HASEQ_NODE__BLOCK_TIME": f"{BLOCK_TIME_MS}ms",
            "HASEQ_RAFT__HEARTBEAT_TIMEOUT": f"{t['heartbeat']}ms",
            "HASEQ_RAFT__ELECTION_TIMEOUT": f"{t['election']}ms",
            "HASEQ_RAFT__LEADER_LEASE_TIMEOUT": f"{t['lease']}ms",
            "HASEQ_RAFT__SEND_TIMEOUT": f"{t['send']}ms",
        }
        lines = ["services:"]
        for name in self.names:
            lines.append(f"  {name}:")
            # A SIGKILLed container stays down until this script starts it again.
            lines.append('    restart: "no"')
            lines.append("    environment:")
            lines += [f'      {k}: "{v}"' for k, v in env.items()]
        path = os.path.join(self.work, f"override-{self.n}-{t['heartbeat']}.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _secret(self):
        path = os.path.join(self.work, "cluster.secret")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
            os.chmod(path, 0o400)
            os.chown(path, 10001, 10001)
        return path

    # ---- docker -------------------------------------------------------------------------

    def dc(self, *args, timeout=180, check=True):
        cmd = list(self.compose_cmd) + ["-p", self.project]
        for f in self.files:
            cmd += ["-f", f]
        cmd += list(args)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired as e:
            raise CheckFailed(f"compose {' '.join(args)}: no answer within {timeout} s") from e
        if check and p.returncode != 0:
            raise CheckFailed(f"compose {' '.join(args)} exited {p.returncode}: {p.stderr[-600:]}")
        return p.stdout

    def cid(self, name):
        """The container of `name` (it keeps its id across kill, stop and start). Looked up
        once: compose's own `ps` takes most of a second, which a timed fault must not."""
        if name not in self.cids:
            out = self.dc("ps", "-q", name).strip()
            if not out:
                raise CheckFailed(f"{name}: no container")
            self.cids[name] = out.splitlines()[0]
        return self.cids[name]

    def pid(self, name):
        pid = run(["docker", "inspect", "-f", "{{.State.Pid}}", self.cid(name)]).strip()
        if pid in ("", "0"):
            raise CheckFailed(f"{name}: not running")
        return pid

    def sigkill(self, name):
        """SIGKILLs the node's process (the container's init: the container stops, as with
        `docker kill`, whose own round trip took 0.3 to 2.7 s here and must not count in a
        timed gap). Returns the monotonic time of the kill."""
        pid = int(self.pid(name))
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        return t

    def start(self, name):
        """`docker start` once Docker has seen the container stop (it may take seconds to
        notice a killed one; starting a container it still thinks runs does nothing)."""
        wait_for(f"Docker seeing {name} stopped", 30,
                 lambda: run(["docker", "inspect", "-f", "{{.State.Running}}", self.cid(name)])
                 .strip() == "false", 0.1)
        run(["docker", "start", self.cid(name)])

    @property
    def raft_net(self):
        return f"{self.project}_raft"

    def raft_ip(self, name):
        fmt = "{{(index .NetworkSettings.Networks \"%s\").IPAddress}}" % self.raft_net
        return run(["docker", "inspect", "-f", fmt, self.cid(name)]).strip()

    def up(self):
        say(f"compose up: {self.n} nodes, project {self.project}")
        self.started = True
        self.dc("up", "-d", "--no-build", timeout=240)
        for name in self.names:
            self.cid(name)

    def down(self):
        if self.started:
            for name in list(self.paused):
                run(["docker", "unpause", self.cid(name)], check=False, quiet=True)
            self.dc("down", "-v", "--remove-orphans", "--timeout", "10", timeout=240, check=False)
            self.started = False

    def save_logs(self, into):
        """Every node's whole log, to INTO/<nodes>-node-<i>.log."""
        os.makedirs(into, exist_ok=True)
        for name in self.names:
            try:
                cid = self.cid(name)
            except CheckFailed:
                continue
            with open(os.path.join(into, f"{self.n}n-{self.project}-{name}.log"), "w") as f:
                subprocess.run(["docker", "logs", "-t", cid], stdout=f, stderr=subprocess.STDOUT)

    def logs(self, lines=30):
        for name in self.names:
            try:
                cid = self.cid(name)
            except CheckFailed:
                continue
            state = run(
                ["docker", "inspect", "-f", "{{.State.Status}} exit={{.State.ExitCode}}", cid],
                check=False,
            ).strip()
            print(f"----- {name} ({state})")
            p = subprocess.run(
                ["docker", "logs", "--tail", str(lines), cid], capture_output=True, text=True
            )
            for line in (p.stdout + p.stderr).splitlines()[-lines:]:
                print(line[:240])

    # ---- what the nodes say -------------------------------------------------------------

    def status(self, name):
        if name in self.paused:
            return None
        return http_json(self.ports[name], "/status")

    def statuses(self, names=None):
        return {n: s for n in (names or self.names) if (s := self.status(n)) is not None}

    def leader(self, among=None, timeout_s=30):
        """The node that says it leads and that a majority of the answering nodes name."""
        among = among or self.names

        def probe():
            st = self.statuses(among)
            leaders = [n for n, s in st.items() if s.get("role") == "leader" and s.get("producing")]
            if len(leaders) != 1:
                return None
            who = leaders[0]
            named = sum(1 for s in st.values() if s.get("leader_id") == who)
            return who if named * 2 > self.n else None

        return wait_for(f"one leader among {','.join(among)}", timeout_s, probe)

    def height(self, names=None):
        return max((s.get("applied_height", 0) for s in self.statuses(names).values()), default=0)

    def block(self, name, h):
        return http_json(self.ports[name], f"/block/{h}")

    def wait_produces(self, among, blocks=3, timeout_s=20):
        """Production goes on: the nodes in `among` apply `blocks` more blocks."""
        start = self.height(among)
        wait_for(
            f"{blocks} more blocks on {','.join(among)} (from {start})",
            timeout_s,
            lambda: self.height(among) >= start + blocks,
        )

    def wait_caught_up(self, name, timeout_s=60):
        """`name` follows (or leads) and has applied and executed the cluster's head."""

        def probe():
            st = self.statuses()
            me = st.get(name)
            if not me or me.get("role") not in ("follower", "leader"):
                return False
            head = max(s.get("applied_height", 0) for s in st.values())
            return (
                me.get("applied_height", 0) + 8 >= head
                and me.get("exec_lag", 99) <= 8
                and me.get("leader_id") is not None
            )

        wait_for(f"{name} caught up and following", timeout_s, probe, interval=0.1)

    # ---- safety -------------------------------------------------------------------------

    def check_safety(self, names=None, what=""):
        """S1 and S2 on every block each answering node committed since the last check, S3
        on each engine's head. Returns the highest height compared."""
        top = 0
        for name in names or self.names:
            st = self.status(name)
            if st is None:
                continue
            h_now = st.get("applied_height", 0)
            # A node that restarted may not have applied all it had yet: compare from where
            # it is now (S2 is checked below on what it already served).
            start = min(self.checked[name], h_now)
            prev = self.chain.get(start)
            for h in range(start + 1, h_now + 1):
                b = self.block(name, h)
                if b is None:
                    raise CheckFailed(f"S2 {what}: {name} applied {h_now} but has no block {h}")
                known = self.chain.get(h)
                if known is not None and known != b["hash"]:
                    raise CheckFailed(
                        f"S1 {what}: {name} has {b['hash']} at height {h}, another node {known}"
                    )
                if prev is not None and b["parent_hash"] != prev:
                    raise CheckFailed(
                        f"S1 {what}: {name}'s block {h} has parent {b['parent_hash']}, not {prev}"
                    )
                self.chain[h] = b["hash"]
                prev = b["hash"]
            self.checked[name] = max(self.checked[name], h_now)
            top = max(top, h_now)
            self.check_engine(name, st, what)
        return top

    def check_engine(self, name, st, what):
        """S3: the engine's canonical head is a committed block."""
        eh = st.get("exec_height", 0)
        if eh == 0 or "exec_hash" not in st:
            return
        known = self.chain.get(eh)
        if known is None:
            b = self.block(name, eh)
            known = b["hash"] if b else None
        if known is None:
            raise CheckFailed(
                f"S3 {what}: {name}'s engine head {eh} is above every committed block it has"
            )
        if st["exec_hash"] != known:
            raise CheckFailed(
                f"S3 {what}: {name}'s engine head at {eh} is {st['exec_hash']}, "
                f"the committed block is {known}"
            )

    def check_kept(self, heights, what):
        """S2: every node still serves the committed blocks at `heights`, unchanged."""
        for name in self.names:
            for h in heights:
                b = wait_for(f"{name} serving block {h}", 30, lambda: self.block(name, h), 0.2)
                if b["hash"] != self.chain[h]:
                    raise CheckFailed(
                        f"S2 {what}: {name} block {h} is {b['hash']}, was {self.chain[h]}"
                    )

    # ---- timing a failover --------------------------------------------------------------

    def time_new_proposer(self, gone, survivors, t_fault, timeout_s):
        """Seconds from t_fault to the first block of a proposer other than `gone` that a
        survivor has applied, and the first new leader seen (seconds)."""
        base = self.height(survivors)
        elected = None
        deadline = t_fault + timeout_s
        while time.monotonic() < deadline:
            st = self.statuses(survivors)
            if elected is None and any(
                s.get("role") == "leader" for s in st.values()
            ):
                elected = time.monotonic() - t_fault
            for name, s in st.items():
                h = s.get("applied_height", 0)
                if h > base:
                    for hh in range(base + 1, h + 1):
                        b = self.block(name, hh)
                        if b and b.get("proposer") != gone:
                            gap = time.monotonic() - t_fault
                            return gap, elected if elected is not None else gap
                    base = h
            time.sleep(POLL_S)
        raise CheckFailed(f"no block from a new proposer within {timeout_s} s of losing {gone}")

    # ---- network faults (root) ----------------------------------------------------------

    def cut(self, a, b, on):
        """Drops, silently, every packet between containers a and b on the raft network (an
        iptables rule in each one's network namespace, entered with nsenter), or restores."""
        for x, y in ((a, b), (b, a)):
            verb = "-I" if on else "-D"
            run(
                ["nsenter", "-t", self.pid(x), "-n", "iptables", "-w", verb, "INPUT", "-s",
                 f"{self.raft_ip(y)}/32", "-j", "DROP"],
                check=on,
            )


# ---- scenarios ---------------------------------------------------------------------------


def bring_up(c):
    c.up()
    leader = c.leader(timeout_s=90)
    for name in c.names:
        c.wait_caught_up(name, timeout_s=90)
    c.wait_produces(c.names, blocks=4)
    c.check_safety(what="after start")
    say(f"up: leader {leader}, height {c.height()}")
    return leader


def scenario_kill(c, report, kills, gap_bound_s):
    gaps, elections = [], []
    for i in range(kills):
        leader = c.leader()
        c.check_safety(what=f"before kill {i + 1}")
        survivors = [n for n in c.names if n != leader]
        t = c.sigkill(leader)
        gap, elected = c.time_new_proposer(leader, survivors, t, timeout_s=30)
        gaps.append(round(gap, 3))
        elections.append(round(elected, 3))
        c.wait_produces(survivors)
        c.start(leader)
        c.wait_caught_up(leader)
        c.check_safety(what=f"after kill {i + 1}")
        say(f"kill {i + 1}/{kills}: {leader} SIGKILLed, gap {gap:.3f} s (elected {elected:.3f} s)")
    figures = summary(gaps)
    report["kill"] = {"gaps_s": gaps, "elected_s": elections, **figures}
    say(f"kill: gap median {figures['median_s']:.3f} s, max {figures['max_s']:.3f} s over {kills}")
    if figures["max_s"] > gap_bound_s:
        raise CheckFailed(f"kill: a production gap of {figures['max_s']:.3f} s > {gap_bound_s} s")


def scenario_pause(c, report, lease_ms):
    leader = c.leader()
    c.check_safety(what="before pause")
    survivors = [n for n in c.names if n != leader]
    run(["docker", "pause", c.cid(leader)])
    t = time.monotonic()  # frozen from here at the latest (the call's round trip is not counted)
    c.paused.add(leader)
    gap, _ = c.time_new_proposer(leader, survivors, t, timeout_s=30)
    c.wait_produces(survivors)
    # Frozen well past its lease and several election timeouts: the others move on.
    time.sleep(max(0.0, max(2.0, 30 * lease_ms / 1000) - (time.monotonic() - t)))
    c.check_safety(survivors, what="while paused")
    run(["docker", "unpause", c.cid(leader)])
    c.paused.discard(leader)
    t_thaw = time.monotonic()
    # The thawed node must not go on as leader: it learns the new term and follows.
    wait_for(
        f"{leader} following after the thaw",
        10,
        lambda: (s := c.status(leader)) and s.get("role") == "follower" and s.get("leader_id"),
    )
    stepped = time.monotonic() - t_thaw
    c.wait_caught_up(leader)
    c.check_safety(what="after pause")
    report["pause"] = {"gap_s": gap, "follows_after_thaw_s": stepped}
    say(f"pause: {leader} frozen, gap {gap:.3f} s; thawed, following in {stepped:.3f} s")


def scenario_disconnect(c, report):
    leader = c.leader()
    c.check_safety(what="before disconnect")
    survivors = [n for n in c.names if n != leader]
    cid = c.cid(leader)
    before = c.status(leader)["applied_height"]
    run(["docker", "network", "disconnect", c.raft_net, cid])
    t = time.monotonic()  # cut off from here at the latest
    try:
        gap, _ = c.time_new_proposer(leader, survivors, t, timeout_s=30)
        c.wait_produces(survivors)
        # Cut off, the old leader commits nothing: its head stays where it was.
        st = wait_for(
            f"{leader} no longer producing while cut off",
            5,
            lambda: (s := c.status(leader)) and not s.get("producing") and s,
        )
        c.check_engine(leader, st, "while disconnected")
        # It may still apply what was committed just before the cut, nothing more.
        if st["applied_height"] > before + 2:
            raise CheckFailed(f"{leader} applied {st['applied_height']} > {before} + 2 cut off")
    finally:
        run(["docker", "network", "connect", "--alias", f"{leader}.raft", c.raft_net, cid])
    c.wait_caught_up(leader)
    c.check_safety(what="after reconnect")
    report["disconnect"] = {"gap_s": gap}
    say(f"disconnect: {leader} cut off, gap {gap:.3f} s; reconnected and following")


def partition(c, side_a, side_b, on):
    for a in side_a:
        for b in side_b:
            c.cut(a, b, on)


def scenario_partition(c, report):
    out = {}
    # 1. The leader on the minority side: the majority elects; healed, the old leader follows.
    leader = c.leader()
    c.check_safety(what="before partition")
    others = [n for n in c.names if n != leader]
    minority = [leader] + others[: (c.n - 1) // 2 - 1]
    majority = [n for n in c.names if n not in minority]
    t = time.monotonic()
    partition(c, minority, majority, True)
    try:
        gap, _ = c.time_new_proposer(leader, majority, t, timeout_s=30)
        c.wait_produces(majority)
        c.check_safety(majority, what="leader in the minority")
        for n in minority:
            c.check_engine(n, c.status(n) or {}, "minority side")
    finally:
        partition(c, minority, majority, False)
    for n in minority:
        c.wait_caught_up(n)
    c.check_safety(what="healed (leader in the minority)")
    out["leader_minority"] = {"minority": minority, "gap_s": gap}
    say(f"partition {minority} | {majority}: gap {gap:.3f} s; healed")

    # 2. Followers on the minority side: the leader keeps producing in its term, and the
    #    healed minority does not force an election (pre-vote).
    leader = c.leader()
    term = c.status(leader)["term"]
    others = [n for n in c.names if n != leader]
    minority = others[: (c.n - 1) // 2]
    majority = [n for n in c.names if n not in minority]
    partition(c, minority, majority, True)
    try:
        time.sleep(3 * GUIDE_TIMINGS["election"] / 1000)
        c.wait_produces(majority)
    finally:
        partition(c, minority, majority, False)
    for n in minority:
        c.wait_caught_up(n)
    c.wait_produces(c.names)
    st = c.status(leader)
    if st is None or st.get("role") != "leader" or st["term"] != term:
        raise CheckFailed(
            f"partition of followers {minority}: leader {leader} term {term} became "
            f"{st and st.get('role')} term {st and st.get('term')}"
        )
    c.check_safety(what="healed (followers in the minority)")
    out["followers_minority"] = {"minority": minority, "term_kept": term}
    say(f"partition {minority} | {majority}: leader {leader} kept term {term}; healed")
    report["partition"] = out


def scenario_rolling(c, report, rounds=2):
    gaps = []
    for r in range(rounds):
        for name in c.names:
            c.leader()
            c.check_safety(what=f"rolling {r + 1} before {name}")
            was_leader = c.status(name)["role"] == "leader"
            rest = [n for n in c.names if n != name]
            base = c.height(rest)
            pid = int(c.pid(name))
            # SIGTERM to the node, as `docker stop` sends it (whose own return waits for
            # Docker to notice the exit, seconds here): the gap a client sees runs from the
            # signal to a block above the height then.
            t = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            wait_for(f"a block after stopping {name}", 30, lambda: c.height(rest) > base)
            gap = time.monotonic() - t
            gaps.append(round(gap, 3))
            wait_for(f"{name} exiting after SIGTERM", 30, lambda: exited(pid))
            stopped = time.monotonic() - t
            c.start(name)
            c.wait_caught_up(name)
            c.check_safety(what=f"rolling {r + 1} after {name}")
            role = "leader" if was_leader else "follower"
            say(f"rolling {r + 1}: {name} ({role}) SIGTERM, exited in {stopped:.2f} s, "
                f"next block {gap:.3f} s after the signal")
    figures = summary(gaps)
    report["rolling"] = {"gaps_s": gaps, **figures}
    say(f"rolling: gap median {figures['median_s']:.3f} s, max {figures['max_s']:.3f} s")
    if figures["max_s"] > 5:
        raise CheckFailed(f"rolling restart: a gap of {figures['max_s']:.3f} s > 5 s")


def scenario_crash(c, report):
    c.leader()
    top = c.check_safety(what="before the crash")
    cids = [c.cid(n) for n in c.names]
    run(["docker", "kill", "-s", "KILL"] + cids)
    # Whatever a node had applied was committed; add what it had not told us yet.
    t = time.monotonic()
    run(["docker", "start"] + cids)
    c.leader(timeout_s=60)
    c.wait_produces(c.names, blocks=2, timeout_s=30)
    resumed = time.monotonic() - t
    heights = sorted({1, top // 2 or 1, top})
    c.check_kept(heights, "after the whole-cluster crash")
    for name in c.names:
        c.wait_caught_up(name)
    c.check_safety(what="after the crash")
    report["crash"] = {"height_before": top, "resumed_s": resumed}
    say(f"crash: all {c.n} killed at height {top}; producing again {resumed:.2f} s after start")


class SlowLink:
    """One container's raft interface put through slow-link.py: its host-side veth moves to a
    bridge of its own with one TAP; the relay copies that TAP's frames, delayed, to a second
    TAP on the compose network's bridge."""

    def __init__(self, c, name, work):
        self.c, self.name = c, name
        self.tag = f"hs{os.getpid() % 10000}"
        self.br = f"{self.tag}b"
        self.node_tap, self.bridge_tap = f"{self.tag}n", f"{self.tag}p"
        self.log = os.path.join(work, "slow-link.log")
        self.proc = None
        self.rule = False
        net_id = run(["docker", "network", "inspect", "-f", "{{.Id}}", c.raft_net]).strip()
        self.docker_br = "br-" + net_id[:12]
        ip = c.raft_ip(name)
        out = run(["nsenter", "-t", c.pid(name), "-n", "ip", "-o", "addr", "show"])
        ifname = next(
            (ln.split()[1] for ln in out.splitlines() if f" {ip}/" in ln), None
        )
        if ifname is None:
            raise CheckFailed(f"{name}: no interface with {ip}")
        link = run(["nsenter", "-t", c.pid(name), "-n", "ip", "-o", "link", "show", ifname])
        peer_index = link.split(":")[1].split("@if")[1]
        host = run(["ip", "-o", "link"])
        self.veth = next(
            ln.split(":")[1].strip().split("@")[0]
            for ln in host.splitlines()
            if ln.split(":")[0] == peer_index
        )

    def __enter__(self):
        py = sys.executable
        self.proc = subprocess.Popen(
            [py, "-u", SLOW_LINK, self.node_tap, self.bridge_tap, f"{LATENCY_MS[0]}-{LATENCY_MS[1]}"],
            stdout=open(self.log, "w"),
            stderr=subprocess.STDOUT,
        )
        wait_for("slow-link ready", 5, lambda: "ready" in open(self.log).read(), 0.05)
        run(["ip", "link", "add", self.br, "type", "bridge", "stp_state", "0",
             "forward_delay", "0"])
        # Frames bridged here must not meet Docker's iptables FORWARD policy (DROP) when the
        # host has bridge-nf-call-iptables on: the bridge's own switch, and a rule besides.
        knob = f"/sys/class/net/{self.br}/bridge/nf_call_iptables"
        if os.path.exists(knob):
            with open(knob, "w") as f:
                f.write("0")
        run(["iptables", "-w", "-I", "FORWARD", "-i", self.br, "-o", self.br, "-j", "ACCEPT"])
        self.rule = True
        run(["ip", "link", "set", self.node_tap, "master", self.br])
        run(["ip", "link", "set", self.bridge_tap, "master", self.docker_br])
        run(["ip", "link", "set", self.veth, "master", self.br])
        for dev in (self.br, self.node_tap, self.bridge_tap):
            run(["ip", "link", "set", dev, "up"])
        os.kill(self.proc.pid, signal.SIGUSR1)
        say(f"latency: {self.name}'s frames held {LATENCY_MS[0]}-{LATENCY_MS[1]} ms "
            f"({self.veth} -> {self.br} -> slow-link -> {self.docker_br})")
        return self

    def __exit__(self, *exc):
        run(["ip", "link", "set", self.veth, "master", self.docker_br], check=False, quiet=True)
        run(["ip", "link", "del", self.br], check=False, quiet=True)
        if self.rule:
            run(["iptables", "-w", "-D", "FORWARD", "-i", self.br, "-o", self.br, "-j", "ACCEPT"],
                check=False, quiet=True)
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return False


def scenario_latency(c, report, kills, work):
    """Run on a cluster started with LATENCY_TIMINGS."""
    leader = c.leader()
    slow = next(n for n in c.names if n != leader)
    out = {"slow_node": slow, "delay_ms": list(LATENCY_MS), "timings_ms": LATENCY_TIMINGS}
    elections, gaps = [], []
    with SlowLink(c, slow, work):
        # The delay shows in the slow node's round trips; production goes on.
        c.wait_produces(c.names, blocks=4, timeout_s=30)
        for i in range(kills):
            leader = c.leader(timeout_s=60)
            c.check_safety(what=f"latency, before kill {i + 1}")
            survivors = [n for n in c.names if n != leader]
            t = c.sigkill(leader)
            bound = 8 * LATENCY_TIMINGS["election"] / 1000
            gap, elected = c.time_new_proposer(leader, survivors, t, timeout_s=bound)
            elections.append(round(elected, 3))
            gaps.append(round(gap, 3))
            c.start(leader)
            if leader == slow:
                # Its container was started again: a new veth, put through the relay anew.
                say("latency: the slow node was killed; later kills see no added delay")
                slow = None
            c.wait_caught_up(leader, timeout_s=90)
            c.check_safety(what=f"latency, after kill {i + 1}")
            say(f"latency kill {i + 1}/{kills}: {leader} killed, elected {elected:.2f} s, "
                f"first block {gap:.2f} s")
            if slow is None:
                break
        rtt = (c.status(c.leader()) or {}).get("timing") or {}
    out.update({"elected_s": elections, "gaps_s": gaps, "rtt_max_ms": rtt.get("rtt_max_ms"),
                **summary(elections)})
    report[f"latency_{c.n}"] = out
    say(f"latency ({c.n} nodes): election median {out['median_s']:.2f} s, "
        f"max {out['max_s']:.2f} s over {len(elections)}; measured RTT_MAX {out['rtt_max_ms']}")


def summary(xs):
    xs = sorted(round(x, 3) for x in xs)
    if not xs:
        return {"n": 0, "median_s": 0.0, "max_s": 0.0}
    return {"n": len(xs), "median_s": statistics.median(xs), "max_s": xs[-1],
            "min_s": xs[0]}


SCENARIOS = ["kill", "pause", "disconnect", "partition", "rolling", "crash", "latency"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, choices=[3, 5], default=3)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, of {','.join(SCENARIOS)}")
    ap.add_argument("--kills", type=int, default=20, help="leader kills in `kill`")
    ap.add_argument("--block-time-ms", type=int, default=BLOCK_TIME_MS,
                    help="node.block_time of every node (default %(default)s)")
    ap.add_argument("--latency-kills", type=int, default=3)
    ap.add_argument("--gap-bound", type=float, default=2.0,
                    help="largest production gap (s) a leader kill may cause")
    ap.add_argument("--image", default=os.environ.get("HASEQ_IMAGE", "haseqd:local"))
    ap.add_argument("--binary", help="build the image from this haseqd binary first")
    ap.add_argument("--report", help="write the figures here as JSON")
    ap.add_argument("--logs", help="keep each node's whole log in this directory")
    args = ap.parse_args()
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {','.join(unknown)} (known: {','.join(SCENARIOS)})")
    if args.kills < 1 or args.latency_kills < 1:
        ap.error("--kills and --latency-kills must be at least 1")
    if args.block_time_ms < 10:
        ap.error("--block-time-ms must be at least 10")
    globals()["BLOCK_TIME_MS"] = args.block_time_ms

    if shutil.which("docker") is None:
        raise EnvProblem("needs docker")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        compose = ["docker-compose"]
    else:
        raise EnvProblem("needs docker compose or docker-compose")
    if os.geteuid() != 0:
        raise EnvProblem("needs root (the secret's owner, nsenter, ip)")
    if args.binary:
        say(f"building the image {args.image} from {args.binary}")
        run([os.path.join(HERE, "build-image.sh"), "--binary", args.binary, "--tag", args.image],
            timeout=600)
    inspect = subprocess.run(["docker", "image", "inspect", args.image], capture_output=True)
    if inspect.returncode != 0:
        raise EnvProblem(f"no image {args.image}: run deploy/docker/build-image.sh or --binary")

    work = tempfile.mkdtemp(prefix="haseq-chaos.")
    report = {"nodes": args.nodes, "block_time_ms": BLOCK_TIME_MS}
    clusters = []
    t_all = time.monotonic()
    try:
        plain = [s for s in chosen if s != "latency"]
        if plain:
            c = Cluster(args.nodes, args.image, GUIDE_TIMINGS, work, compose)
            clusters.append(c)
            bring_up(c)
            for s in plain:
                t = time.monotonic()
                say(f"== {s}")
                if s == "kill":
                    scenario_kill(c, report, args.kills, args.gap_bound)
                elif s == "pause":
                    scenario_pause(c, report, GUIDE_TIMINGS["lease"])
                elif s == "disconnect":
                    scenario_disconnect(c, report)
                elif s == "partition":
                    scenario_partition(c, report)
                elif s == "rolling":
                    scenario_rolling(c, report)
                elif s == "crash":
                    scenario_crash(c, report)
                c.wait_produces(c.names)
                say(f"== {s} passed in {time.monotonic() - t:.1f} s")
            top = c.check_safety(what="at the end")
            report["blocks_checked"] = top
            if args.logs:
                c.save_logs(args.logs)
            c.down()
        if "latency" in chosen:
            say("== latency")
            c = Cluster(args.nodes, args.image, LATENCY_TIMINGS, work, compose)
            clusters.append(c)
            bring_up(c)
            scenario_latency(c, report, args.latency_kills, work)
            c.check_safety(what="latency, at the end")
            if args.logs:
                c.save_logs(args.logs)
            c.down()
        report["duration_s"] = round(time.monotonic() - t_all, 1)
        say(f"all passed in {report['duration_s']} s: {json.dumps(report, default=str)[:2000]}")
        return 0
    except CheckFailed as e:
        say(f"FAIL: {e}")
        for c in clusters:
            if c.started:
                c.logs()
        report["failed"] = str(e)
        return 1
    finally:
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=2, default=str)
        for c in clusters:
            if args.logs and c.started:
                c.save_logs(args.logs)
            c.down()
        shutil.rmtree(work, ignore_errors=True)


def on_sigterm(*_):
    raise SystemExit(143)  # through every finally: the cluster is taken down


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        sys.exit(main())
    except EnvProblem as e:
        print(f"chaos.py: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
