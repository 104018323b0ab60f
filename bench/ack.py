"""Ack latency of ``opsbot serve`` against a bare Bolt app that only acks.

    .venv/bin/python bench/ack.py [--requests 2000] [--concurrency 20] [--rounds 5]
    .venv/bin/python bench/ack.py --replicas 2 --requests 2000 --concurrency 50   # the load run
    .venv/bin/python bench/ack.py --rounds 0 --cpu 1000     # CPU per request of each process only
    .venv/bin/python bench/ack.py --client python           # the same, measured by a Python client
    .venv/bin/python bench/ack.py --pause-work              # the ack alone: opsbot's workers stopped meanwhile
    .venv/bin/python bench/ack.py --before /tmp/before      # and another checkout's opsbot in the same rounds
                                                            # (git worktree add /tmp/before <commit>)

Both servers run as separate processes on loopback, each behind the same WSGI server
(waitress, same thread count), signed with the same secret. The bare app acks `/ops`
and does nothing else. opsbot acks, then does the real work after the ack: it runs
`help` (app.yaml's rate limits are lifted, so every request runs in full; --keep-limits
keeps them), posts the result to a fake Slack response_url and writes the action log to
PostgreSQL. Each server gets a warm-up, then N signed `/ops help` requests at the
given concurrency, in interleaved rounds; each opsbot round's work is finished before the
next round starts, so neither server is measured under the other's left-over work. The
script prints p50/p99 ack latency per round, the median of the rounds' p99 ratios (target:
<= 1.2) and the p99 of all rounds together, and checks every result was delivered.

The load comes from wrk (Debian: ``apt-get install wrk``): C and epoll, one thread, with
pre-signed requests. A Python client (``--client python``, httpx and a thread per
connection) measures its own waits for the GIL too, and those grow with the rate the server
answers at, so it made the faster server's tail look longer: in the same minutes it gave
1.34 and 1.44 where wrk gave 0.83 and 0.72 (wrk figures since found to be biased: the bare app
waited on Bolt's 10 ms ack poll, and the script cut off the slowest requests; see README).

wrk's own histogram is not used as printed: wrk 4 adds invented samples to it (its coordinated-
omission correction); ``uncorrected`` takes them out, so each request counts once.

``--cpu N`` then sends N more to each server and prints the CPU time (user + system, from
/proc) each process spent per request: the servers, opsbot's workers, the fake Slack, the
PostgreSQL backends of the action log's database and the Redis server (shared: others' load counts).

Needs wrk, Redis (database 5 is flushed and used; $BENCH_REDIS_URL to change) and
PostgreSQL ($DATABASE_URL) on loopback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
from slack_sdk.signature import SignatureVerifier

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-signing-secret"
BEFORE = "opsbot before"
TOKEN = "xoxb-bench"
THREADS = 8


def serve_bare(port: int, api_url: str) -> None:
    """The baseline: a Bolt app that acks /ops and nothing else, on the same WSGI server, with the same Bolt
    settings for the ack as opsbot's own app."""
    from slack_bolt import App
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    from slack_sdk import WebClient
    from waitress.server import create_server

    app = App(signing_secret=SECRET, client=WebClient(token=TOKEN, base_url=api_url),
              token_verification_enabled=False,
              process_before_response=True)  # as opsbot's app (bot/slack/app.py): else Bolt polls for the ack every 10 ms

    @app.command("/ops")
    def ack_only(ack):
        ack()

    server = create_server(SlackRequestHandler(app), host="127.0.0.1", port=port, threads=THREADS)
    print(f"ready {server.effective_port}", flush=True)
    server.run()


LOGS: dict[int, Path] = {}  # server pid → its stderr, in a file: a pipe nobody reads would block a chatty server


def launch(command: list[str], env: dict, log: Path, **options) -> subprocess.Popen:
    with log.open("w") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True, **options)
    LOGS[proc.pid] = log
    return proc


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {LOGS[proc.pid].read_text()}")
        try:
            httpx.post(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not come up")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def body_for(index: int, response_url: str) -> str:
    """A signed ``/ops help`` as Slack sends it; each command has its own response_url (Slack's take 5 posts)."""
    return urlencode({
        "team_id": "T1", "channel_id": "C1", "channel_name": "ops", "user_id": f"U{index % 7}", "command": "/ops",
        "text": "help", "response_url": f"{response_url}-{index}", "trigger_id": f"bench-{time.time_ns()}-{index}",
    })


WRK_SCRIPT = r"""
-- Sends each pre-signed request below exactly once, in order, and stops wrk (SIGINT ends its wait) when each
-- has been answered; then prints wrk's latency histogram (microseconds, count) and what undoes its correction.
-- A connection that frees up once every request has gone out waits (delay) instead of sending one again: an
-- answer to a repeat would count towards "each answered" and end the run while the last, slowest requests
-- were still in flight, so the tail was cut off and replaced with fast repeats.
local ffi = require("ffi")
ffi.cdef("int kill(int pid, int sig); int getpid(void);")
local requests, reserved, sent = {}, 0, 0
answered, other = 0, 0  -- globals: done() runs in another Lua state and reads them with thread:get
for _, body in ipairs(BODIES) do
  requests[#requests + 1] = wrk.format("POST", PATH, {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Slack-Request-Timestamp"] = body[1], ["X-Slack-Signature"] = body[2]}, body[3])
end
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
delay = function()  -- called before each request() but after a reconnect (an error, counted)
  if reserved < #requests then reserved = reserved + 1; return 0 end
  return 3600000
end
request = function()
  sent = sent + 1
  return requests[(sent - 1) % #requests + 1]
end
response = function(status, headers, body)
  answered = answered + 1
  if status ~= 200 and status < 400 then other = other + 1 end  -- wrk counts only >= 400
  if answered == #requests then wrk.thread:stop(); ffi.C.kill(ffi.C.getpid(), 2) end
end
done = function(summary, latency, _)
  local e = summary.errors
  local answers, others = 0, 0
  for _, thread in ipairs(threads) do answers = answers + thread:get("answered"); others = others + thread:get("other") end
  io.write(string.format("errors %d\n", e.connect + e.read + e.write + e.status + e.timeout + others))
  io.write(string.format("complete %d duration %d answered %d\n", summary.requests, summary.duration, answers))
  local i = 1
  while true do
    local value, count = latency(i)
    if value == 0 then break end
    io.write(string.format("%d %d\n", value, count))
    i = i + 1
  end
end
"""


def uncorrected(histogram: dict[int, int], complete: int, duration: int, connections: int) -> dict[int, int]:
    """wrk's histogram as measured: before printing, wrk 4 "corrects for coordinated omission" (stats_correct):
    for each latency n >= 2e, e the mean time a connection took per request, it adds n's count again at n - e,
    n - 2e, ... while above e. Those invented samples are not requests (200 requests came back as 285) and
    weigh a server's tail by its own mean; this takes them out again, so each request counts once."""
    if complete // connections == 0:
        return dict(histogram)
    expected = duration // (complete // connections)
    added: dict[int, int] = {}
    original: dict[int, int] = {}
    for n in sorted(histogram, reverse=True):  # a value gets additions only from larger ones
        count = histogram[n] - added.get(n, 0)
        if count <= 0:
            continue
        original[n] = count
        if n >= 2 * expected:
            m = n - expected
            while m > expected:
                added[m] = added.get(m, 0) + count
                m -= expected
    return original


def load_wrk(urls: list[str], response_url: str, requests: int, concurrency: int,
             duration: int = 120) -> tuple[list[float], int]:
    """Send ``requests`` signed /ops help at ``concurrency`` (connections), spread over ``urls`` (a load balancer
    in front of replicas): one ``wrk`` per url, all at once. Returns the latencies (seconds) and the errors:
    wrk's (connect, read, write, timeout, status >= 400), other non-200 answers, and every request that has no
    latency recorded (no answer before the run's ``duration``, a server that died), so none is missed.

    The load generator is wrk (C, epoll, one thread), not Python: a Python client's own GIL waits land in the
    latencies it measures, and grow with the rate the server answers at, so a faster server looked slower."""
    verifier = SignatureVerifier(SECRET)
    timestamp = str(int(time.time()))  # good for Slack's five minutes; a round takes seconds
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for number, url in enumerate(urls):
            # the connections split over the replicas add up to the concurrency asked for (3 x 6 gave 18 of 20)
            connections = max(1, concurrency // len(urls) + (number < concurrency % len(urls)))
            bodies = []
            for index in range(number, requests, len(urls)):
                body = body_for(index, response_url)
                bodies.append("{%s, %s, [==[%s]==]}" % (
                    _lua(timestamp), _lua(verifier.generate_signature(timestamp=timestamp, body=body)), body))
            script = Path(tmp, f"load-{number}.lua")
            script.write_text(f"PATH = {_lua(urlsplit(url).path)}\nBODIES = {{{', '.join(bodies)}}}\n{WRK_SCRIPT}")
            runs.append((len(bodies), connections, subprocess.Popen(
                ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url],
                stdout=subprocess.PIPE, text=True)))
        latencies, errors = [], 0
        for expected, connections, run in runs:
            out, _ = run.communicate()
            lines = out.splitlines()
            at = next((i for i, line in enumerate(lines) if line.startswith("errors ")), None)
            if at is None:  # wrk itself failed: every request of this run is an error
                errors += expected
                continue
            errors += int(lines[at].split()[1])
            _, complete, _, duration, _, _ = lines[at + 1].split()
            histogram = dict(tuple(map(int, line.split())) for line in lines[at + 2:])
            measured = uncorrected(histogram, int(complete), int(duration), connections)
            recorded = [micros / 1e6 for micros, count in sorted(measured.items()) for _ in range(count)]
            if len(recorded) > int(complete):
                raise SystemExit(f"wrk's histogram holds {len(recorded)} latencies for {complete} answers: "
                                 "its correction changed; see uncorrected() in bench/ack.py")
            errors += max(0, expected - len(recorded))  # unanswered, or slower than wrk's timeout
            latencies += recorded
    return latencies, errors


def load_python(urls: list[str], response_url: str, requests: int, concurrency: int) -> tuple[list[float], int]:
    """The same from Python (httpx, a thread per connection), round-robin over ``urls``: the client the figures
    before wrk were measured with (``--client python``), kept to show what it adds to them."""
    from concurrent.futures import ThreadPoolExecutor

    verifier = SignatureVerifier(SECRET)
    clients = [httpx.Client(timeout=10) for _ in range(concurrency)]

    def one(index: int) -> float | None:
        body = body_for(index, response_url)
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": verifier.generate_signature(timestamp=ts, body=body)}
        started = time.perf_counter()
        try:
            response = clients[index % concurrency].post(urls[index % len(urls)], content=body, headers=headers)
        except httpx.HTTPError:
            return None
        elapsed = time.perf_counter() - started
        return elapsed if response.status_code == 200 else None

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    for client in clients:
        client.close()
    latencies = [r for r in results if r is not None]
    return latencies, len(results) - len(latencies)


LOADERS = {"wrk": load_wrk, "python": load_python}


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def drain(slack: "_Remote", prefix: str, expected: int, timeout: float = 120.0) -> float:
    """Seconds until ``expected`` results were posted under ``prefix`` (or ``timeout``)."""
    started = time.monotonic()
    while slack.count(prefix) < expected and time.monotonic() - started < timeout:
        time.sleep(0.05)
    return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    if not values:  # no answer at all (a dead server): no figure, and the errors say why
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker-nice", type=int, default=10, help="opsbot serve --worker-nice")
    parser.add_argument("--replicas", type=int, default=1, help="processes of each server, behind round-robin")
    parser.add_argument("--client", choices=sorted(LOADERS), default="wrk",
                        help="the load generator: wrk (default), or the Python client used before it")
    parser.add_argument("--pause-work", action="store_true",
                        help="stop opsbot's worker processes (SIGSTOP) during each opsbot round and resume them after:"
                             " the ack alone, without the work after it competing for the CPU")
    parser.add_argument("--keep-limits", action="store_true",
                        help="keep app.yaml's rate limits (most requests are then answered 'Slow down')")
    parser.add_argument("--before", metavar="PATH",
                        help="also run another checkout's opsbot serve in the same rounds (its own app.yaml, action-log"
                             " schema and Redis keys): before/after figures measured in one run")
    parser.add_argument("--cpu", type=int, default=0, metavar="N",
                        help="then N requests to each server, and the CPU each process spent per request")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.api_url)
        return 0
    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("bench/ack.py needs wrk, the HTTP load generator (Debian: apt-get install wrk), "
                         "or --client python")
    load = LOADERS[args.client]

    fake = subprocess.Popen([sys.executable, "-m", "tests.support.fakeslack", "--token", TOKEN, "--counts-only"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    slack = _Remote(fake.stdout.readline().strip())
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url,
               "RUN_MIGRATIONS": "true", "LOG_LEVEL": "ERROR"}
        env["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).flushdb()  # the benchmark's own database
        checkouts = {"opsbot serve": ROOT, **({BEFORE: Path(args.before).resolve()} if args.before else {})}
        names = ["bare Bolt app", *checkouts]
        servers: dict[str, list[subprocess.Popen]] = {name: [] for name in names}
        urls: dict[str, list[str]] = {name: [] for name in names}
        for _ in range(args.replicas):
            bare_port = free_port()
            servers["bare Bolt app"].append(launch(
                [sys.executable, __file__, "--serve-bare", str(bare_port), "--api-url", slack.api_url],
                env, Path(tmp, f"bare-{bare_port}.log")))
            urls["bare Bolt app"].append(f"http://127.0.0.1:{bare_port}/slack/events")
            for name, checkout in checkouts.items():
                bot_port, config = free_port(), bench_config(checkout, Path(tmp, slug(name)), name, args.keep_limits)
                servers[name].append(launch(
                    [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(bot_port),
                     "--threads", str(THREADS), "--worker-nice", str(args.worker_nice)],
                    {**env, "OPSBOT_CONFIG": str(config)}, Path(tmp, f"{slug(name)}-{bot_port}.log"), cwd=checkout))
                urls[name].append(f"http://127.0.0.1:{bot_port}/slack/events")
        everything = [proc for procs in servers.values() for proc in procs]
        try:
            for name in urls:
                for url, proc in zip(urls[name], servers[name]):
                    wait_ready(url, proc)
            for name, targets in urls.items():  # warm-up
                load(targets, slack.response_url(f"warmup-{slug(name)}"), 50, args.concurrency)
            for name in checkouts:  # else its work ran through the first bare round
                drain(slack, f"response/warmup-{slug(name)}-", 50)
            rounds: list[dict[str, tuple[float, float, int]]] = []
            pooled: dict[str, list[float]] = {name: [] for name in urls}
            delivered, drained = {name: 0 for name in checkouts}, []
            for number in range(args.rounds):  # interleaved, so both servers see the same machine noise
                figures = {}
                for name, targets in urls.items():
                    time.sleep(0.5)
                    paused = children({proc.pid for proc in servers[name]}) if args.pause_work else set()
                    for pid in paused:
                        os.kill(pid, signal.SIGSTOP)
                    try:
                        latencies, errors = load(targets, slack.response_url(f"{slug(name)}-{number}"),
                                                 args.requests, args.concurrency)
                    finally:
                        for pid in paused:
                            os.kill(pid, signal.SIGCONT)
                    figures[name] = (percentile(latencies, 50), percentile(latencies, 99), errors)
                    pooled[name] += latencies
                    if name in checkouts:  # its work is done before the next round: each round starts quiet
                        took = drain(slack, f"response/{slug(name)}-{number}-", args.requests)
                        delivered[name] += slack.count(f"response/{slug(name)}-{number}-")
                        drained.append(took)
                rounds.append(figures)
            expected = args.requests * args.rounds
            if args.cpu:
                cpu = {name: cpu_per_request(load, name, targets, servers[name], fake.pid, slack, args.cpu,
                                             args.concurrency, env["REDIS_URL"])
                       for name, targets in urls.items()}
        finally:
            for proc in [*everything, fake]:
                proc.terminate()
            for proc in [*everything, fake]:
                proc.wait(60)

    print(f"{args.rounds} rounds of {args.requests} signed `/ops help` requests at concurrency {args.concurrency}, "
          f"{args.replicas} replica(s) of each server, {THREADS} server threads, "
          f"opsbot workers at nice {args.worker_nice}" + (", paused during its rounds" if args.pause_work else ""))
    if args.cpu:
        show_cpu(cpu, args.cpu)
    if not rounds:
        return 0
    print(f"{'round':<7}{'server':<16}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'p99 ratio':>11}")
    ratios: dict[str, list[float]] = {name: [] for name in checkouts}
    for index, figures in enumerate(rounds, 1):
        for name, (p50, p99, errors) in figures.items():
            shown = ""
            if name in checkouts:
                ratios[name].append(p99 / figures["bare Bolt app"][1])
                shown = f"{ratios[name][-1]:>11.2f}"
            print(f"{index:<7}{name:<16}{p50 * 1000:>10.2f}{p99 * 1000:>10.2f}{errors:>8}{shown}")
    ratio = {name: statistics.median(values) for name, values in ratios.items()}
    errors = sum(f[2] for figures in rounds for f in figures.values())
    p99 = {name: percentile(latencies, 99) for name, latencies in pooled.items()}
    for name in checkouts:
        print(f"median p99 ratio {name}/bare: {ratio[name]:.2f}" + (" (target <= 1.2)" if name != BEFORE else ""))
    print(f"errors: {errors}")
    if errors:
        print(f"NOT A MEASUREMENT: {errors} errors (failed connects, each retry counted; resets; timeouts; refusals; "
              "requests never answered), and the figures above leave those requests out")
    for name in checkouts:
        print(f"p99 of all rounds' acks together: bare {p99['bare Bolt app'] * 1000:.2f} ms, {name}"
              f" {p99[name] * 1000:.2f} ms, ratio {p99[name] / p99['bare Bolt app']:.2f}")
    print("results delivered to response_url: " + ", ".join(f"{name} {count}/{expected}"
                                                            for name, count in delivered.items())
          + f" (each round's work done {min(drained):.1f}-{max(drained):.1f}s after its last ack)")
    ok = errors == 0 and all(count == expected for count in delivered.values())
    return 0 if ratio["opsbot serve"] <= 1.2 and ok else 1


def slug(name: str) -> str:
    return name.replace(" ", "-")


def bench_config(checkout: Path, folder: Path, name: str, keep_limits: bool) -> Path:
    """``checkout``'s app.yaml for the benchmark: its runbooks, no rate limits (unless kept), and for the
    checkout measured as before, an action-log schema and Redis keys of its own (each server's workers
    take only that server's deliveries)."""
    text = (checkout / "app.yaml").read_text().replace("runbooks_dir: runbooks",
                                                       f"runbooks_dir: {checkout / 'runbooks'}")
    if not keep_limits:  # every request runs `help` in full, rather than most being told "Slow down"
        text, count = re.subn(r"(?m)^(  (?:per_user|guarded_per_user|per_command):) .*$", r"\1 0", text)
        assert count == 3, f"{checkout}/app.yaml's limits: section changed; update bench/ack.py"
    if name == BEFORE:
        text, count = re.subn(r'(?m)^  schema: opsbot\n  prefix: "opsbot:"$', '  schema: opsbot_before\n  prefix:'
                              ' "opsbot-before:"', text)
        assert count == 1, f"{checkout}/app.yaml's state: section changed; update bench/ack.py"
    folder.mkdir()
    config = folder / "app.yaml"
    config.write_text(text)
    return config


def cpu_per_request(load: Callable, name: str, targets: list[str], procs: list[subprocess.Popen], fake: int, slack: "_Remote",
                    requests: int, concurrency: int, redis_url: str) -> dict[str, float]:
    """CPU seconds per request of each process taking part, over ``requests`` more (and their work, drained)."""
    import redis

    key = f"cpu-{slug(name)}"
    server = redis.Redis.from_url(redis_url)

    def snapshot() -> dict[str, dict[int, float]]:
        pids = {proc.pid for proc in procs}
        info = server.info("cpu")
        return {"server": {pid: cpu_seconds(pid) for pid in pids},
                "workers": {pid: cpu_seconds(pid) for pid in children(pids)},
                "fake Slack": {fake: cpu_seconds(fake)},
                "PostgreSQL": {pid: cpu_seconds(pid) for pid in pg_backends()},
                "Redis (shared)": {0: info["used_cpu_user"] + info["used_cpu_sys"]}}

    before = snapshot()
    load(targets, slack.response_url(key), requests, concurrency)
    if name != "bare Bolt app":
        started = time.monotonic()
        while slack.count(f"response/{key}") < requests and time.monotonic() - started < 120:
            time.sleep(0.1)
    after = snapshot()
    return {part: sum(value - before[part].get(pid, 0.0) for pid, value in after[part].items()) / requests
            for part in after}


def show_cpu(cpu: dict[str, dict[str, float]], requests: int) -> None:
    print(f"CPU per request (user + system), over {requests} more `/ops help` to each server and their work:")
    print(f"{'process':<16}" + "".join(f"{name:>16}" for name in cpu))
    for part in next(iter(cpu.values())):
        print(f"{part:<16}" + "".join(f"{figures[part] * 1000:>13.3f} ms" for figures in cpu.values()))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(parents: set[int]) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) in parents:
                found.add(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def pg_backends() -> set[int]:
    """The PostgreSQL backends connected to the action log's database (not this one)."""
    import psycopg

    with psycopg.connect(os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")) as conn:
        return {row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                               " AND pid <> pg_backend_pid()")}


class _Remote:
    """The fake Slack Web API running in its own process, so it does not share the load generator's CPU."""

    def __init__(self, base: str):
        self.base = base
        self.api_url = base + "/api/"

    def response_url(self, key: str) -> str:
        return f"{self.base}/response/{key}"

    def count(self, prefix: str) -> int:
        """Calls to methods starting with ``prefix`` (every command's own response_url)."""
        return httpx.get(self.base + "/_stats", params={"prefix": prefix}, timeout=5).json()["calls"]


if __name__ == "__main__":
    sys.exit(main())
