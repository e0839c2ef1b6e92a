"""Benchmark driver: see scripts/bench and doc/BENCHMARKING.md.

Orchestration only (standard library, no SDK): starting testvault and kvfs, seeding and rotating
through testvault's control API, reading its counters. Every timed loop runs in the Rust tool
`bench-loops`, so interpreter overhead never lands in a ratio.
"""

import argparse
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOKEN_OPS = {"Token", "OpenIdConfiguration", "ManagedIdentityToken", "Unauthorized"}

FULL = dict(
    n_big=10_000, b1_iters=20_000, stat_iters=20_000, ls_runs=7, b3_n=40, b6_threads=64,
    b6_rounds=3, ready_runs=5, b4_n=500, b4_ttls=(2, 3), b4_periods=10, b5_ttl=3, b5_k=20,
    b5_idle_s=10, b8_kills=20, b9_runs=3, budget_s=1500, b10_n=10_000, b10_delay_ms=5,
)
SMOKE = dict(
    n_big=1_000, b1_iters=3_000, stat_iters=3_000, ls_runs=5, b3_n=30, b6_threads=64,
    b6_rounds=2, ready_runs=5, b4_n=100, b4_ttls=(2,), b4_periods=3, b5_ttl=1, b5_k=5,
    b5_idle_s=2, b8_kills=5, b9_runs=1, budget_s=240, b10_n=300, b10_delay_ms=5,
)


# B6 with readers in separate processes, each round on a fresh mount (process counts per row).
FULL.update(b6p_procs=(64, 256), b6p_rounds=3)
SMOKE.update(b6p_procs=(16,), b6p_rounds=1)

# B4's data: (row name, seconds before the first read that the values were written, whether
# the row has the ≥ 10× target). Day-old values are seeded with backdated stamps; the others are
# written at the mount, and the first read waits until they are that old. A value read within
# about 2 s of its write cannot be vouched for by a list (doc/SEMANTICS.md) and costs one more
# GET, once: `just_written` shows that cost, without a target.
B4_AGES = (("day_old", 86_400, True), ("seconds_old", 3, True), ("just_written", 0, False))

def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# Processes: testvault, kvfs mounts, the loop tool
# ------------------------------------------------------------------------------------------------

class TestVault:
    def __init__(self, binary: str, seed_file: str, workdir: str):
        self.proc = subprocess.Popen([binary, "--seed", seed_file], stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(workdir, "testvault.log"), "ab"),
                                     text=True)
        line = _readline_with_timeout(self.proc.stdout, 120)
        if not line:
            raise BenchError("testvault did not print its info line (see testvault.log)")
        self.info = json.loads(line)
        self.ctx = ssl.create_default_context(cafile=self.info["ca_file"])

    def control(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.info["control_url"] + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else None

    def counters(self) -> dict:
        return self.control("GET", "/counters") or {}

    def reset(self) -> None:
        self.control("POST", "/reset", {})

    def log_entries(self) -> list:
        return self.control("GET", "/log") or []

    def seed(self, doc: dict) -> None:
        self.control("POST", "/seed", doc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _readline_with_timeout(stream, timeout: float) -> str:
    result = []
    t = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else ""


def vault_requests(counters: dict) -> int:
    return sum(v for k, v in counters.items() if k not in TOKEN_OPS)


def mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].replace("\\040", " ") == path:
                return True
    return False


class Bench:
    def __init__(self, args, cfg: dict, bins: dict, workdir: str):
        self.args = args
        self.cfg = cfg
        self.bins = bins
        self.workdir = workdir
        self.mounts = []          # mountpoints we mounted (kvfs or tmpfs)
        self.procs = []           # foreground kvfs processes we started
        self.vaults = []
        self.rows = []
        self.open_modes = self._detect_open_modes()

    # -- helpers ----------------------------------------------------------------------------------

    def _detect_open_modes(self):
        out = subprocess.run([self.bins["kvfs"], "mount", "--help"], capture_output=True,
                             text=True, timeout=30)
        if "--open-mode" in out.stdout + out.stderr:
            return ["snapshot", "cached"]
        return []

    def tool(self, *args, timeout=600, stdin=None) -> dict:
        cmd = [self.bins["bench-loops"], *map(str, args)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=stdin)
        if out.returncode != 0:
            raise BenchError(f"`bench-loops {args[0]}` failed: {out.stderr.strip()}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start_vault(self, name: str, secrets: list) -> TestVault:
        seed_file = os.path.join(self.workdir, f"seed-{name}.json")
        with open(seed_file, "w") as f:
            json.dump({"secrets": secrets}, f)
        log(f"starting testvault '{name}' with {len(secrets)} secrets")
        v = TestVault(self.bins["testvault"], seed_file, self.workdir)
        self.vaults.append(v)
        return v

    def mount_args(self, v: TestVault, mnt: str, ttl: str, open_mode=None) -> list:
        a = [self.bins["kvfs"], "mount", v.info["vault_url"], mnt, "--auth", "client-secret",
             "--cache-ttl", ttl, "--ca-file", v.info["ca_file"], "--no-verify-challenge-resource",
             "--log-file", mnt + ".log"]
        if open_mode:
            a += ["--open-mode", open_mode]
        return a

    def kvfs_env(self, v: TestVault) -> dict:
        i = v.info
        env = dict(os.environ, AZURE_TENANT_ID=i["tenant_id"], AZURE_CLIENT_ID=i["client_id"],
                   AZURE_CLIENT_SECRET=i["client_secret"], AZURE_AUTHORITY_HOST=i["authority_host"])
        env["NO_PROXY"] = "127.0.0.1,localhost"
        return env

    def new_dir(self, name: str) -> str:
        d = os.path.join(self.workdir, name)
        os.mkdir(d)
        return d

    def mount_foreground(self, v: TestVault, name: str, ttl: str, open_mode=None):
        mnt = self.new_dir(name)
        p = subprocess.Popen(self.mount_args(v, mnt, ttl, open_mode) + ["--foreground"],
                             env=self.kvfs_env(v), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        self.mounts.append(mnt)
        deadline = time.monotonic() + 30
        while not mounted(mnt):
            if p.poll() is not None:
                raise BenchError(f"kvfs mount {mnt} exited with {p.returncode}; see {mnt}.log")
            if time.monotonic() > deadline:
                raise BenchError(f"kvfs mount {mnt} not ready after 30 s; see {mnt}.log")
            time.sleep(0.005)
        return mnt, p

    def unmount(self, mnt: str, proc=None) -> None:
        if mounted(mnt):
            r = subprocess.run([self.bins["kvfs"], "unmount", mnt], capture_output=True, timeout=30)
            if r.returncode != 0 and mounted(mnt):
                subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if mnt in self.mounts:
            self.mounts.remove(mnt)

    def mount_tmpfs(self, name: str) -> str:
        d = self.new_dir(name)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "bench-tmpfs", d],
                       check=True, capture_output=True, timeout=30)
        self.mounts.append(d)
        return d

    def cleanup(self) -> None:
        for mnt in list(self.mounts):
            try:
                self.unmount(mnt)
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                log(f"cleanup: {mnt}: {e}")
                subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for v in self.vaults:
            v.stop()

    def row(self, name, value, unit, baseline, ratio, target, passed=None, **extra) -> None:
        r = {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
             "target": target, "pass": passed}
        r.update(extra)
        self.rows.append(r)
        print(json.dumps(r, ensure_ascii=False), flush=True)

    # -- the benchmark ----------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        if os.environ.get("BENCH_ONLY") == "B10":
            return self.bench_cold_ls_l()   # while working on that row
        rnd = random.Random(6)
        tmp = self.mount_tmpfs("tmpfs")

        # The small vault: B4's readers (seeded again before each B4 row) and B5's rotation.
        nb4 = cfg["b4_n"]
        small = self.start_vault("small", [{"name": k, "value": _value(rnd, 64)}
                                           for k in ("rot", "warm")])
        small.seed({"secrets": [{"name": "rot", "value": "rot-initial"}]})

        # The big vault: n_big secrets of 1 KiB, one of them the 64-byte B1 secret.
        n = cfg["n_big"]
        cold = [f"cold-{i:03d}" for i in range(cfg["b3_n"])]
        herd = [f"herd-{i}" for i in range(cfg["b6_rounds"])]
        special = ["b1-small"] + cold + herd
        fill = [f"s-{i:05d}" for i in range(n - len(special))]
        names = special + fill
        values = {name: _value(rnd, 1024) for name in names}
        values["b1-small"] = _value(rnd, 64)
        big = self.start_vault("big", [{"name": k, "value": v} for k, v in values.items()])

        # The tmpfs twin: a directory with the same names and sizes, so the B1/B2 files are at
        # the same depth (<mountpoint>/secrets/b1-small) and path walks cost the same.
        tmp_dir = os.path.join(tmp, "secrets")
        os.mkdir(tmp_dir)
        for k, v in values.items():
            with open(os.path.join(tmp_dir, k), "w") as f:
                f.write(v)
        tmp_small = os.path.join(tmp_dir, "b1-small")

        self.bench_mount_to_ready(big)

        first_mode = self.open_modes[0] if self.open_modes else None
        mnt, proc = self.mount_foreground(big, "kv-big", "10m", first_mode)
        rss_mounted = _pss_tree_kib(proc.pid)
        sec = os.path.join(mnt, "secrets")

        # Warm the mount: token, connection (and whatever a first lookup costs).
        self.tool("read-all", self._paths_file("warm", [os.path.join(sec, "b1-small")]))
        self.bench_cold_read(big, sec, cold)
        self.bench_herd(big, sec, herd)
        self.bench_herd_processes()
        self.bench_orc(os.path.join(sec, "b1-small"), tmp_small, first_mode)
        self.bench_stat(os.path.join(sec, "b1-small"), tmp_small)
        self.bench_ls(sec, tmp_dir, n)
        self.bench_memory(proc.pid, sec, names, rss_mounted)
        self.bench_takeover(big, mnt, proc, values["b1-small"])
        self.bench_handoff(big, mnt, proc, values["b1-small"], first_mode)
        self.unmount(mnt, proc)

        for mode in self.open_modes[1:]:
            m2, p2 = self.mount_foreground(big, f"kv-big-{mode}", "10m", mode)
            self.tool("read-all", self._paths_file("warm2", [os.path.join(m2, "secrets", "b1-small")]))
            self.bench_orc(os.path.join(m2, "secrets", "b1-small"), tmp_small, mode)
            self.unmount(m2, p2)
        big.stop()

        # B4: every TTL, for values written a day before and seconds before the mount. The other
        # open modes first, on mounts of their own (in cached mode reads are served by the page
        # cache, and only the kernel's revalidations keep the entries hot).
        first_mode = self.open_modes[0] if self.open_modes else None
        for mode in self.open_modes[1:]:
            m2, p2 = self.bench_polling(small, nb4, mode, max(cfg["b4_ttls"]), B4_AGES[0], rnd)
            self.unmount(m2, p2)
        for ttl in cfg["b4_ttls"]:
            for age in B4_AGES:
                if age[2] or ttl == min(cfg["b4_ttls"]):
                    m2, p2 = self.bench_polling(small, nb4, first_mode, ttl, age, rnd)
                    self.unmount(m2, p2)
        # B5 on a mount with its own TTL.
        self._small = self.mount_foreground(small, "kv-rot", f"{cfg['b5_ttl']}s", first_mode)
        self.bench_rotation(small)
        small.stop()
        self.bench_cold_ls_l()

    # B10: a cold `ls -l` of a large collection on a vault with latency, with prefetch and
    # without (`--prefetch-concurrency 0`: one lookup and one GET at a time, as before prefetch).
    # The two mounts run side by side on one vault, each with an identity of its own so that the
    # request log tells their requests apart; each answer is 5 ms late (testvault's delay fault
    # sleeps per request, so concurrent requests overlap as on a real vault).
    def bench_cold_ls_l(self) -> None:
        n, delay = self.cfg["b10_n"], self.cfg["b10_delay_ms"]
        rnd = random.Random(10)
        names = [f"l-{i:05d}" for i in range(n)]
        sizes = {k: 1 + rnd.randrange(1024) for k in names}
        v = self.start_vault("ls", [{"name": k, "value": "v" * sizes[k]} for k in names])
        base_id = v.control("POST", "/identities", {
            "name": "bench-baseline", "client_secret": "bench-baseline-secret",
            "roles": ["Key Vault Secrets User"]})
        for op in ("GetSecret", "GetSecrets"):
            v.control("POST", "/faults", {"op": op, "kind": "delay", "ms": delay})
        mnt, proc = self.mount_foreground(v, "kv-ls-prefetch", "10m")
        env = dict(self.kvfs_env(v), AZURE_CLIENT_ID=base_id["client_id"],
                   AZURE_CLIENT_SECRET="bench-baseline-secret")
        base_mnt = self.new_dir("kv-ls-baseline")
        base_proc = subprocess.Popen(
            self.mount_args(v, base_mnt, "10m") + ["--foreground", "--prefetch-concurrency", "0"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.procs.append(base_proc)
        self.mounts.append(base_mnt)
        deadline = time.monotonic() + 30
        while not mounted(base_mnt):
            if base_proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"kvfs mount {base_mnt} did not come up; see {base_mnt}.log")
            time.sleep(0.005)
        v.control("POST", "/reset", {})
        for op in ("GetSecret", "GetSecrets"):   # the reset cleared them
            v.control("POST", "/faults", {"op": op, "kind": "delay", "ms": delay})
        log(f"B10 cold ls -l of {n} secrets ({delay} ms per request), with and without prefetch")
        env_c = dict(os.environ, LC_ALL="C")
        took, listings = {}, {}

        def ls(key, d):
            t0 = time.perf_counter()
            r = subprocess.run(["ls", "-l", d], capture_output=True, text=True, env=env_c,
                               timeout=900)
            took[key] = time.perf_counter() - t0
            listings[key] = r.stdout if r.returncode == 0 else None

        threads = [threading.Thread(target=ls, args=("prefetch", os.path.join(mnt, "secrets"))),
                   threading.Thread(target=ls, args=("baseline", os.path.join(base_mnt, "secrets")))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for key, out in listings.items():
            got = {}
            for line in (out or "").splitlines():
                f = line.split()
                if len(f) >= 9 and line.startswith("-"):
                    got[f[8]] = int(f[4])
            if got != sizes:
                raise BenchError(f"B10: `ls -l` through the {key} mount got wrong sizes or names")
        entries = v.log_entries()
        stats = {}
        for key, who in (("prefetch", "app"), ("baseline", "bench-baseline")):
            mine = [e for e in entries if e.get("identity") == who and e.get("op") not in TOKEN_OPS]
            gets = sorted(e["at_ms"] for e in mine if e.get("op") == "GetSecret")
            peak, j = 0, 0
            for i, t in enumerate(gets):
                while gets[j] <= t - 10_000:
                    j += 1
                peak = max(peak, i - j + 1)
            stats[key] = dict(requests=len(mine), gets=len(gets), peak=peak,
                              list_pages=sum(1 for e in mine if e.get("op") == "GetSecrets"))
        self.unmount(mnt, proc)
        self.unmount(base_mnt, base_proc)
        v.stop()
        p, b = stats["prefetch"], stats["baseline"]
        value, base = took["prefetch"], took["baseline"]
        self.row(f"B10.cold_ls_l.{n}", round(value, 2), "s", round(base, 2), round(value / base, 2),
                 "faster than one GET at a time, within the vault's 4,000 GETs per 10 s",
                 value < base and p["peak"] <= 4000, delay_ms=delay,
                 requests=p["requests"], baseline_requests=b["requests"])
        self.row(f"B10.cold_ls_l.peak_gets_10s.{n}", p["peak"], "GETs", b["peak"],
                 round(p["peak"] / max(b["peak"], 1), 2),
                 "≤ 3,000 + what the lister fetches itself beyond it (Key Vault throttles at 4,000)",
                 p["peak"] <= 4000, gets=p["gets"], baseline_gets=b["gets"])
        self.row(f"B10.cold_ls_l.gets.{n}", p["gets"], "requests", b["gets"],
                 round(p["gets"] / max(b["gets"], 1), 2), f"each value once: {n}",
                 p["gets"] == n, list_pages=p["list_pages"], baseline_list_pages=b["list_pages"])

    # B7 (second half): mount-to-ready and nothing fetched at mount.
    def bench_mount_to_ready(self, v: TestVault) -> None:
        log(f"B7 mount-to-ready: {self.cfg['ready_runs']} detached mounts")
        times, fetched, tokens, challenges = [], [], [], []
        mnt = self.new_dir("kv-ready")
        for _ in range(self.cfg["ready_runs"]):
            v.reset()
            t0 = time.perf_counter()
            r = subprocess.run(self.mount_args(v, mnt, "10m"), env=self.kvfs_env(v),
                               capture_output=True, text=True, timeout=60)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                raise BenchError(f"kvfs mount failed: {(r.stdout + r.stderr).strip()}")
            self.mounts.append(mnt)
            time.sleep(0.3)
            c = v.counters()
            fetched.append(vault_requests(c))
            tokens.append(sum(c.get(k, 0) for k in TOKEN_OPS - {"Unauthorized"}))
            challenges.append(c.get("Unauthorized", 0))
            pid = _pid_with_arg(mnt)
            self.unmount(mnt)
            _wait_pid_gone(pid, 10)
            times.append(dt)
        base = []
        d = self.new_dir("tmpfs-ready")
        for _ in range(self.cfg["ready_runs"]):
            t0 = time.perf_counter()
            subprocess.run(["mount", "-t", "tmpfs", "bench-ready", d], check=True, timeout=30)
            base.append(time.perf_counter() - t0)
            subprocess.run(["umount", d], check=True, timeout=30)
        value = statistics.median(times) * 1e3
        baseline = statistics.median(base) * 1e3
        self.row("B7.mount_to_ready", round(value, 1), "ms", round(baseline, 1),
                 round(value / baseline, 2), "≤ 100 ms (baseline: `mount -t tmpfs`)",
                 value <= 100, runs_ms=[round(t * 1e3, 1) for t in times])
        self.row("B7.vault_requests_at_mount", max(fetched), "requests", 0, None,
                 "0 between mount and first access", max(fetched) == 0,
                 token_requests=max(tokens), challenge_probes=max(challenges))

    # B3: cold first read, against one HTTPS GET over a warm connection.
    def bench_cold_read(self, v: TestVault, sec: str, cold: list) -> None:
        log(f"B3 cold first read of {len(cold)} never-read secrets")
        r = self.tool("first-read", *[os.path.join(sec, c) for c in cold])
        if r["errors"]:
            raise BenchError(f"B3: {r['errors']} cold reads failed")
        token = v.control("POST", "/tokens", {"identity": "app"})["access_token"]
        urls = [f"{v.info['vault_url']}/secrets/{c}?api-version=7.5" for c in cold]
        env = dict(os.environ, BENCH_TOKEN=token, NO_PROXY="127.0.0.1,localhost")
        out = subprocess.run([self.bins["bench-loops"], "https-get", "--ca", v.info["ca_file"],
                              *urls], capture_output=True, text=True, timeout=120, env=env)
        if out.returncode != 0:
            raise BenchError(f"B3 baseline: {out.stderr.strip()}")
        b = json.loads(out.stdout)
        value, base = r["p50_ns"] / 1e6, b["p50_ns"] / 1e6
        limit = 1.3 * base + 1.0
        self.row("B3.cold_first_read.p50", round(value, 3), "ms", round(base, 3),
                 round(value / base, 2), f"≤ 1.3×baseline + 1 ms = {limit:.3f} ms",
                 value <= limit, ratio_to_target=round(value / limit, 2),
                 p90_ms=round(r["p90_ns"] / 1e6, 3), max_ms=round(r["max_ns"] / 1e6, 3),
                 samples=r["n"], baseline_p90_ms=round(b["p90_ns"] / 1e6, 3))

    # B6: a herd of concurrent cold readers makes one GET.
    def bench_herd(self, v: TestVault, sec: str, herd: list) -> None:
        threads = self.cfg["b6_threads"]
        log(f"B6 {threads} concurrent cold readers × {len(herd)} secrets")
        gets, errors, distinct = [], 0, 0
        for name in herd:
            v.reset()
            r = self.tool("concurrent-read", os.path.join(sec, name), threads, timeout=120)
            errors += r["errors"]
            distinct = max(distinct, r["distinct_values"])
            gets.append(sum(1 for e in v.log_entries()
                            if e.get("op") == "GetSecret" and (e.get("name") or "") == name))
        worst = max(gets)
        self.row("B6.concurrent_cold_readers.gets", worst, "requests", threads,
                 round(threads / max(worst, 1), 1), "exactly 1 GetSecret for 64 readers",
                 worst == 1 and errors == 0, per_round=gets, read_errors=errors,
                 distinct_values=distinct)

    # B6 (processes): a herd of cold readers in separate processes, each round on a fresh mount,
    # so the vault client's first requests (the authentication challenge) are part of it.
    # A vault of its own, so the other rows' listings keep their sizes.
    def bench_herd_processes(self) -> None:
        rounds, sizes = self.cfg["b6p_rounds"], self.cfg["b6p_procs"]
        v = self.start_vault("herd-procs", [{"name": f"proc-herd-{n}-{i}",
                                             "value": f"value-of-proc-herd-{n}-{i}"}
                                            for n in sizes for i in range(rounds)])
        for n in sizes:
            log(f"B6 {n} cold readers in separate processes × {rounds} fresh mounts")
            names = [f"proc-herd-{n}-{i}" for i in range(rounds)]
            per_round, challenges, errors, distinct = [], [], 0, 0
            for i, name in enumerate(names):
                v.reset()
                mnt, proc = self.mount_foreground(v, f"kv-herd-{n}-{i}", "10m")
                try:
                    outs = _herd_of_processes(["cat", os.path.join(mnt, "secrets", name)], n)
                finally:
                    self.unmount(mnt, proc)
                errors += sum(1 for rc, _ in outs if rc != 0)
                distinct = max(distinct, len({out for rc, out in outs if rc == 0}))
                if any(out != f"value-of-{name}".encode() for rc, out in outs if rc == 0):
                    errors += 1
                log_entries = v.log_entries()
                # Every request naming the object, whatever its answer (a 401 challenge too).
                per_round.append(sum(1 for e in log_entries
                                     if (e.get("name") or "").lower() == name.lower()))
                challenges.append(sum(1 for e in log_entries if e.get("status") == 401))
            worst = max(per_round)
            self.row(f"B6.cold_reader_processes.{n}.gets", worst, "requests", n,
                     round(n / max(worst, 1), 1),
                     f"exactly 1 request naming the object for {n} reader processes, fresh mount",
                     worst == 1 and errors == 0 and distinct == 1, per_round=per_round,
                     challenges_per_mount=challenges, read_errors=errors,
                     distinct_values=distinct)
        v.stop()

    # B1: warm open+read+close against tmpfs, interleaved.
    def bench_orc(self, path: str, tmp_path: str, mode) -> None:
        log(f"B1 warm open+read+close ({mode or 'default'} mode)")
        r = self.tool("orc", "--iters", self.cfg["b1_iters"], "--block", 500, path, tmp_path)
        kv, tf = r["results"]
        suffix = f".{mode}" if mode else ""
        for q, limit in (("p50", 1.5), ("p99", 3.0)):
            value, base = kv[f"{q}_ns"] / 1e3, tf[f"{q}_ns"] / 1e3
            ratio = value / base
            self.row(f"B1.open_read_close.{q}{suffix}", round(value, 2), "us", round(base, 2),
                     round(ratio, 2), f"≤ {limit}× tmpfs", ratio <= limit,
                     samples=kv["n"], errors=kv["errors"])

    # B2: warm stat against tmpfs.
    def bench_stat(self, path: str, tmp_path: str) -> None:
        log("B2 warm stat")
        r = self.tool("stat", "--iters", self.cfg["stat_iters"], "--block", 500, path, tmp_path)
        kv, tf = r["results"]
        value, base = kv["p50_ns"] / 1e3, tf["p50_ns"] / 1e3
        self.row("B2.stat.p50", round(value, 2), "us", round(base, 2), round(value / base, 2),
                 "≤ 1.5× tmpfs", value / base <= 1.5, p99_us=round(kv["p99_ns"] / 1e3, 2),
                 baseline_p99_us=round(tf["p99_ns"] / 1e3, 2))

    # B2: `ls -l` of the whole directory, warm, interleaved with the tmpfs twin.
    def bench_ls(self, sec: str, tmp_dir: str, n: int) -> None:
        log(f"B2 ls -l of {n} entries (first run warms the mount)")
        env = dict(os.environ, LC_ALL="C")

        def ls(d):
            t0 = time.perf_counter()
            r = subprocess.run(["ls", "-l", d], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env, timeout=600)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                raise BenchError(f"ls -l {d}: {r.stderr.decode().strip()[:200]}")
            return dt

        t0 = time.perf_counter()
        ls(sec)
        first = time.perf_counter() - t0
        ls(tmp_dir)
        count = len(os.listdir(sec))
        if count != n:
            raise BenchError(f"B2: {sec} lists {count} entries, expected {n}")
        kv, tf = [], []
        for _ in range(self.cfg["ls_runs"]):
            kv.append(ls(sec))
            tf.append(ls(tmp_dir))
        value, base = statistics.median(kv) * 1e3, statistics.median(tf) * 1e3
        self.row(f"B2.ls_l.{n}", round(value, 1), "ms", round(base, 1), round(value / base, 2),
                 "≤ 1.5× tmpfs", value / base <= 1.5, runs=len(kv),
                 first_cold_run_ms=round(first * 1e3, 1))

    # B7: resident memory after reading every secret.
    def bench_memory(self, pid: int, sec: str, names: list, rss_mounted: int) -> None:
        log(f"B7 memory after reading {len(names)} secrets")
        r = self.tool("read-all", self._paths_file("all", [os.path.join(sec, k) for k in names]))
        if r["errors"]:
            raise BenchError(f"B7: {r['errors']} reads failed")
        pss = _pss_tree_kib(pid)
        value, base = pss / 1024, rss_mounted / 1024
        self.row(f"B7.rss_after_{len(names)}_secrets", round(value, 1), "MiB", round(base, 1),
                 round(value / base, 2),
                 "≤ 50 MiB (supervisor + worker, shared pages once; baseline: right after mount)",
                 value <= 50, bytes_read=r["bytes"],
                 rss_sum_mib=round(_rss_tree_kib(pid) / 1024, 1),
                 supervisor_pss_mib=round(_pss_kib(pid) / 1024, 1))

    # B4: vault requests while every secret is read every second.
    def bench_polling(self, v: TestVault, nb4: int, mode, ttl: int, age, rnd):
        age_name, written_ago, has_target = age
        suffix = f".{age_name}.ttl{ttl}" + (f".{mode}" if mode else "")
        periods = self.cfg["b4_periods"]
        duration = ttl * periods
        # New versions of every secret (stamped a day ago, or written now), then the mount.
        names = [f"p-{i:03d}" for i in range(nb4)]
        backdated = written_ago >= 60
        extra = {"written_ago_s": written_ago} if backdated else {}
        v.seed({"secrets": [dict(name=k, value=_value(rnd, 64), **extra) for k in names]})
        seeded = time.monotonic()
        mnt, proc = self.mount_foreground(v, f"kv-b4{suffix}", f"{ttl}s", mode)
        paths = self._paths_file("b4", [os.path.join(mnt, "secrets", k) for k in names])
        if not backdated:
            time.sleep(max(0.0, seeded + written_ago - time.monotonic()))
        first_read = written_ago if backdated else time.monotonic() - seeded
        self.tool("read-all", paths)
        log(f"B4 {nb4} secrets ({age_name}) read every second for {periods} TTLs of {ttl}s "
            f"({duration}s)")
        v.reset()
        r = self.tool("periodic-read", paths, 1000, duration, timeout=duration + 120)
        c = v.counters()
        measured = vault_requests(c)
        gets = c.get("GetSecret", 0)
        pages = c.get("GetSecrets", 0)
        elapsed = r["elapsed_ns"] / 1e9
        baseline = nb4 * periods
        ratio = baseline / max(measured, 1)
        target = "baseline/measured ≥ 10 (baseline: one GET per secret per TTL)"
        if not has_target:
            target = "informational (one extra GET per value read within ~2 s of its write)"
        self.row(f"B4.vault_requests{suffix}", measured, "requests", baseline, round(ratio, 1),
                 target, ratio >= 10 if has_target else None,
                 get_secret=gets, list_pages=pages,
                 other=measured - gets - pages, duration_s=round(elapsed, 1),
                 written_s_before_first_read=round(first_read, 2), reads=r["reads"],
                 read_errors=r["errors"], late_passes=r["late_passes"])
        self.row(f"B4.requests_per_node_hour{suffix}", round(measured * 3600 / elapsed), "requests/h",
                 round(baseline * 3600 / elapsed), round(ratio, 1),
                 "informational (Key Vault limit: ~4,000 GETs per 10 s per vault)", None)
        return mnt, proc

    # B5: rotation latency, and warm reads while refreshes run.
    def bench_rotation(self, v: TestVault) -> None:
        cfg = self.cfg
        ttl, k = cfg["b5_ttl"], cfg["b5_k"]
        mnt, proc = self._small
        sec = os.path.join(mnt, "secrets")
        warm = os.path.join(sec, "warm")
        self.tool("read-all", self._paths_file("b5", [warm, os.path.join(sec, "rot")]))
        log(f"B5 idle warm-read loop ({cfg['b5_idle_s']}s)")
        idle = self.tool("orc", "--seconds", cfg["b5_idle_s"], "--block", 200, warm)["results"][0]

        log(f"B5 {k} rotations with TTL {ttl}s, reader every 10 ms")
        watcher = subprocess.Popen([self.bins["bench-loops"], "watch", os.path.join(sec, "rot"), "10"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        seen = []                 # (t_ns, value)
        cond = threading.Condition()

        def pump():
            for line in watcher.stdout:
                d = json.loads(line)
                if "value" in d:
                    with cond:
                        seen.append((d["t_ns"], d["value"]))
                        cond.notify_all()

        threading.Thread(target=pump, daemon=True).start()
        busy = subprocess.Popen([self.bins["bench-loops"], "orc", "--seconds", "100000", "--block",
                                 "200", "--stdin-stop", warm], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        rnd = random.Random(5)
        latencies, missed = [], 0
        try:
            for i in range(k):
                time.sleep(rnd.uniform(0.05, ttl))
                value = f"rot-{i}-{rnd.randrange(1 << 30)}"
                v.seed({"secrets": [{"name": "rot", "value": value}]})
                written = time.monotonic_ns()
                deadline = time.monotonic() + ttl + 10
                with cond:
                    while not any(val == value for _, val in seen):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        cond.wait(left)
                    hit = [t for t, val in seen if val == value]
                if hit:
                    latencies.append((hit[0] - written) / 1e9)
                else:
                    missed += 1
                    log(f"B5: rotation {i} not seen within TTL + 10 s")
        finally:
            out, _ = busy.communicate(input="", timeout=60)
            watcher.stdin.close()
            watcher.wait(timeout=30)
        if not latencies:
            raise BenchError("B5: no rotation was ever seen")
        loaded = json.loads(out.strip().splitlines()[-1])["results"][0]
        lat = sorted(latencies)
        p50 = statistics.median(lat)
        p99 = lat[max(0, -(-99 * len(lat) // 100) - 1)]
        self.row("B5.rotation_latency.p50", round(p50, 3), "s", ttl, round(p50 / ttl, 2),
                 f"informational (baseline: TTL {ttl}s)", None, rotations=k, missed=missed)
        self.row("B5.rotation_latency.p99", round(p99, 3), "s", ttl, round(p99 / ttl, 2),
                 f"≤ TTL + 1 s = {ttl + 1} s", p99 <= ttl + 1 and missed == 0,
                 max_s=round(lat[-1], 3), missed=missed)
        value, base = loaded["p50_ns"] / 1e3, idle["p50_ns"] / 1e3
        self.row("B5.warm_read_during_refresh.p50", round(value, 2), "us", round(base, 2),
                 round(value / base, 2), "≈ 1× idle (informational)", None,
                 p99_us=round(loaded["p99_ns"] / 1e3, 2), idle_p99_us=round(idle["p99_ns"] / 1e3, 2),
                 samples=loaded["n"], errors=loaded["errors"])
        self.unmount(mnt, proc)

    def bind_file(self, src: str, name: str) -> str:
        """A single-file bind mount of `src`, as kubelet makes for a `subPath` volume mount."""
        dst = os.path.join(self.workdir, name)
        open(dst, "w").close()
        subprocess.run(["mount", "--bind", src, dst], check=True, capture_output=True, timeout=30)
        self.mounts.append(dst)
        return dst

    # B8: the worker is killed; how long until a read through a bind mount succeeds again.
    def bench_takeover(self, v: TestVault, mnt: str, proc, expected: str) -> None:
        kills = self.cfg["b8_kills"]
        # Baseline: what a restart costs without a takeover at best (a fresh mount until its
        # first read answers), which would also leave every bind mount dead.
        fresh = []
        for i in range(3):
            d = self.new_dir(f"b8-fresh-{i}")
            t0 = time.perf_counter()
            r = subprocess.run(self.mount_args(v, d, "10m"), env=self.kvfs_env(v),
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise BenchError(f"B8 baseline: kvfs mount failed: {r.stderr.strip()}")
            self.mounts.append(d)
            with open(os.path.join(d, "secrets", "b1-small")) as f:
                f.read()
            fresh.append(time.perf_counter() - t0)
            self.unmount(d)
        base = statistics.median(fresh) * 1e3
        log(f"B8 takeover: the worker SIGKILLed {kills} times, reads through a bind mount")
        bound = self.bind_file(os.path.join(mnt, "secrets", "b1-small"), "b8-bound")
        ino = os.stat(bound).st_ino
        rnd = random.Random(8)
        times, failed = [], 0
        for _ in range(kills):
            worker = _worker_of(proc.pid, 30)
            # Over a second of serving: a replacement, not a crash loop that backs off.
            time.sleep(rnd.uniform(1.1, 1.4))
            t0 = time.perf_counter()
            os.kill(worker, signal.SIGKILL)
            # This read waits in the kernel until the new worker serves it.
            while True:
                try:
                    with open(bound) as f:
                        data = f.read()
                    break
                except OSError:
                    failed += 1
                    if time.perf_counter() - t0 > 30:
                        raise BenchError("B8: no successful read within 30 s of a kill")
            times.append(time.perf_counter() - t0)
            if data != expected:
                raise BenchError("B8: a read after a takeover returned other bytes")
            deadline = time.monotonic() + 30
            while _worker_of(proc.pid, 30) == worker:
                if time.monotonic() > deadline:
                    raise BenchError("B8: the killed worker was not replaced")
                time.sleep(0.005)
        if os.stat(bound).st_ino != ino:
            raise BenchError("B8: the bind-mounted file changed its inode number")
        self.unmount(bound)
        times.sort()
        for q, value in (("p50", statistics.median(times)), ("p99", _percentile(times, 99))):
            ms = value * 1e3
            self.row(f"B8.takeover.{q}", round(ms, 1), "ms", round(base, 1), round(ms / base, 2),
                     "≤ 1000 ms, 0 failed reads (baseline: a fresh mount until its first read)",
                     ms <= 1000 and failed == 0, kills=kills, failed_reads=failed)

    # B9: a second `kvfs mount` takes the live mount over while a reader loops.
    def bench_handoff(self, v: TestVault, mnt: str, proc, expected: str, mode) -> None:
        runs = self.cfg["b9_runs"]
        log(f"B9 handoff: {runs} upgrade(s) of a live mount under a reading loop")
        bound = self.bind_file(os.path.join(mnt, "secrets", "b1-small"), "b9-bound")
        dev = os.stat(mnt).st_dev
        stop = threading.Event()
        samples, errors = [], []

        def reader():
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    with open(bound) as f:
                        ok = f.read() == expected
                    if not ok:
                        errors.append("other bytes")
                except OSError as e:
                    errors.append(str(e))
                samples.append((t0, time.perf_counter() - t0))

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        commands, pauses, idle = [], [], []
        incumbent = proc
        try:
            for _ in range(runs):
                time.sleep(0.5)
                before = len(samples)
                t0 = time.perf_counter()
                r = subprocess.run(self.mount_args(v, mnt, "10m", mode), env=self.kvfs_env(v),
                                   capture_output=True, text=True, timeout=120)
                t1 = time.perf_counter()
                if r.returncode != 0:
                    raise BenchError(f"B9: the second kvfs mount failed: {r.stderr.strip()}")
                if incumbent is not None:
                    incumbent.wait(timeout=30)
                    if incumbent.returncode != 0:
                        raise BenchError(f"B9: the old supervisor exited {incumbent.returncode}")
                else:
                    _wait_pid_gone(old_pid, 30)
                old_pid, incumbent = _pid_with_arg(mnt), None
                time.sleep(0.3)
                window = [d for (s, d) in samples[before:] if s <= t1 and s + d >= t0]
                quiet = [d for (s, d) in samples[before:] if s + d < t0]
                commands.append((t1 - t0) * 1e3)
                pauses.append(max(window, default=0) * 1e3)
                idle.extend(quiet)
        finally:
            stop.set()
            t.join(timeout=10)
            self.unmount(bound)
        if os.stat(mnt).st_dev != dev:
            raise BenchError("B9: the mount changed (st_dev) across the handoff")
        base = _percentile(sorted(idle), 99) * 1e3 if idle else None
        worst = max(pauses)
        self.row("B9.handoff.longest_read", round(worst, 2), "ms", base and round(base, 3),
                 base and round(worst / base, 1),
                 "0 failed reads, ≤ 1000 ms (baseline: idle read p99)",
                 not errors and worst <= 1000, failed_reads=len(errors), runs=runs,
                 reads=len(samples))
        self.row("B9.handoff.command", round(statistics.median(commands), 1), "ms", None, None,
                 "informational: `kvfs mount` until the new worker serves", None)

    def _paths_file(self, name: str, paths: list) -> str:
        f = os.path.join(self.workdir, f"paths-{name}.txt")
        with open(f, "w") as out:
            out.write("\n".join(paths) + "\n")
        return f


def _herd_of_processes(argv: list, n: int, timeout: float = 120) -> list:
    """Runs `argv` in n processes released together; returns [(returncode, stdout)].

    Each process is `sh` waiting in `read` on one shared pipe; once all of them wait there (the
    kernel names the wait in /proc/<pid>/wchan), closing the pipe's only writer wakes them at once.
    """
    r, w = os.pipe()
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(["sh", "-c", 'read _ready; exec "$@"', "sh", *argv],
                                          stdin=r, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL))
    finally:
        os.close(r)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        waiting = 0
        for p in procs:
            try:
                with open(f"/proc/{p.pid}/wchan") as f:
                    waiting += "pipe_read" in f.read()
            except OSError:
                pass
        if waiting == n:
            break
        time.sleep(0.005)
    os.close(w)  # EOF: every reader goes
    out = []
    end = time.monotonic() + timeout
    for p in procs:
        try:
            data, _ = p.communicate(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            data, _ = p.communicate()
        out.append((p.returncode, data))
    return out


def _value(rnd: random.Random, size: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rnd.choice(alphabet) for _ in range(size))


def _kib(path: str, field: str) -> int:
    """A `Field:   123 kB` line of a /proc file."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} in {path}")


def _rss_kib(pid: int) -> int:
    return _kib(f"/proc/{pid}/status", "VmRSS")


def _children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _pss_kib(pid: int) -> int:
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss")


def _rss_tree_kib(pid: int) -> int:
    """RSS of a kvfs mount, the supervisor and its worker: counts the binary's shared pages
    twice."""
    return _rss_kib(pid) + sum(_rss_kib(c) for c in _children(pid))


def _pss_tree_kib(pid: int) -> int:
    """Memory of a kvfs mount, the supervisor and its worker, with pages they share (the
    binary) counted once: proportional set sizes, summed."""
    return _pss_kib(pid) + sum(_pss_kib(c) for c in _children(pid))


def _worker_of(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        kids = _children(pid)
        if kids:
            return kids[0]
        if time.monotonic() > deadline:
            raise BenchError(f"kvfs {pid} has no worker")
        time.sleep(0.002)


def _percentile(sorted_values: list, q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return sorted_values[i]


def _pid_with_arg(arg: str):
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                parts = f.read().split(b"\0")
        except OSError:
            continue
        if arg.encode() in parts and any(p.endswith(b"kvfs") for p in parts[:1]):
            return int(d)
    return None


def _wait_pid_gone(pid, timeout: float) -> None:
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)


def print_table(rows: list, meta: dict) -> None:
    print()
    print(f"kvfs benchmarks ({meta['mode']}, {meta['binaries']}) — {meta['date']}, "
          f"{meta['cpu']}, nproc {meta['nproc']}, kernel {meta['kernel']}, "
          f"load {meta['loadavg_at_start'][0]} → {meta['loadavg_at_end'][0]}")
    head = ("row", "value", "baseline", "ratio", "target", "pass")
    cells = []
    for r in rows:
        p = {True: "yes", False: "NO", None: "-"}[r.get("pass")]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']}"
        cells.append((r["name"], f"{r['value']} {r['unit']}",
                      "-" if r["baseline"] is None else f"{r['baseline']} {r['unit']}",
                      ratio, r["target"], p))
    widths = [max(len(str(c[i])) for c in cells + [head]) for i in range(len(head))]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(str(x).ljust(w) for x, w in zip(c, widths)))


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "kernel": os.uname().release, "cpu": cpu,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    ap = argparse.ArgumentParser(description="kvfs benchmark suite (doc/BENCHMARKING.md)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    cfg = SMOKE if args.smoke else FULL
    bins = {b: os.path.join(args.bin_dir, b) for b in ("kvfs", "testvault", "bench-loops")}
    for b, p in bins.items():
        if not os.access(p, os.X_OK):
            print(f"bench: {p} is missing: build it first (cargo build --workspace)",
                  file=sys.stderr)
            return 2
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench: needs root and /dev/fuse", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise BenchError(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(
        BenchError(f"time budget of {cfg['budget_s']} s exceeded")))
    signal.alarm(cfg["budget_s"])

    workdir = tempfile.mkdtemp(prefix="kvfs-bench-")
    bench = Bench(args, cfg, bins, workdir)
    meta = dict(machine(), mode="smoke" if args.smoke else "full", binaries=args.bin_dir,
                open_modes=bench.open_modes or ["default (no --open-mode flag)"])
    log(f"{meta['mode']} run, binaries from {args.bin_dir}, work dir {workdir}")
    started = time.monotonic()
    failed = None
    try:
        bench.run()
    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
        failed = str(e)
    except Exception as e:  # noqa: BLE001 - a bug in the bench: say so in one line, still clean up
        failed = f"{type(e).__name__}: {e}"
        import traceback
        traceback.print_exc()
    finally:
        signal.alarm(0)
        bench.cleanup()
        leftovers = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if line.split()[4].startswith(workdir):
                    leftovers.append(line.split()[4])
        if leftovers:
            log(f"still mounted, not removing {workdir}: {leftovers}")
        elif not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({"meta": meta}, ensure_ascii=False))
    print_table(bench.rows, meta)
    if failed:
        print(f"bench: FAILED: {failed}", file=sys.stderr)
        return 1
    missed = [r["name"] for r in bench.rows if r.get("pass") is False]
    log(f"done in {meta['elapsed_s']} s; targets missed: {', '.join(missed) or 'none'}")
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
