"""``audit verify`` against an oracle that knows what was done to each chain: a differential property test.

Hypothesis draws, per tenant, a chain laid out in regions, one operation per region, and
the SQL appender (tests/support/audit.py: a trigger hashing v1 in PostgreSQL, not the
bot's code) writes it. The operations are then applied to the table the way people and
bugs do, ``audit verify --all`` runs through the engine, and each tenant's report is
compared with the oracle: the same set of classes (none invented, none missed), the same
earliest failing row, the same row count.

Oracle rules. Rows are written 60 s apart; every region starts with clean rows (none
only for the first region: it may start the chain) and the chain ends with clean rows,
so each operation's effect is its own. "The row after" is the next row written after
the region, always a clean one.

* ``edit`` (actor, action or payload changed, hash kept; a NULL actor included; or
  createdAt moved 70 s later, past the row after it): ``content_mismatch``, failing row:
  the edited row, where it now sorts. A row dated out of order by an edit is no clock skew.
* ``delete`` (1 or 2 adjacent rows): ``link_break``, failing row: the row after them.
* ``insert_good`` (forged row dated 30 s after the row before it, linking to it, hashed
  correctly): ``link_break``, failing row: the row after it, which names the same
  predecessor.
* ``insert_bad`` (forged row at the same place with a made-up hash; its prevHash is made
  up, equal to its own hash, NULL, the right one, or the row two back):
  ``content_mismatch`` and ``link_break``, failing row: the forged row.
* ``skew`` (a writer whose clock is behind: its row, linked to the newest row, is dated
  ``back`` rows earlier): ``clock_skew``, failing row: the backdated row. With ``back`` 0
  (behind, but still after its predecessor) nothing is wrong.
* ``fork`` (two writers append in overlapping transactions, dated less than
  ``audit.fork_window`` apart): ``fork``, failing row: the later of the two in
  (createdAt, id) order.
* A snapshot (``audit snapshot`` through the engine) taken while the chain is valid adds
  nothing by itself. Tenants of kind ``truncate`` lose their newest rows, the snapshot
  head among them, after it: ``truncated`` if fewer rows remain than it counted, else
  ``rewritten``. Tenants of kind ``rewrite`` get a payload edited at or before the head
  and every row from there re-hashed consistently (then 0-2 more appends): ``rewritten``.
  Either way the failing row is the snapshot head, after every other failing row.

The earliest failing row is the one first in (createdAt, id) order. The oracle uses no
code of the verifier: only what it wrote and what it did.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from bot.core.invocation import Actor, Where
from tests.conftest import ALICE, write_config
from tests.support.audit import AuditChain

STEP = timedelta(seconds=60)
LOCAL_OPS = ("edit", "delete", "insert_good", "insert_bad", "skew", "fork")
POST_HOC = ("edit", "delete", "insert_good", "insert_bad")  # applied after the writes: a snapshot can precede them
NOTES = st.text(st.sampled_from("ab \t\n\\\"'é✓—中😀"), max_size=6)
ACTORS = ("{writer}@example.com", None, "zoë.{writer}@example.com")


@pytest.fixture
def bot(make_runtime, tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("AUDIT_SNAPSHOT_SECRET", "oracle-snapshot-secret")
    return make_runtime(write_config(tmp_path / "app.yaml", database_url, extra="""
        audit:
          database: main
          columns: {writer: writer}
          snapshot_secret: ${AUDIT_SNAPSHOT_SECRET:-}
          fork_window: 2s
        limits: {per_user: "0", per_command: "0"}  # every example runs a few commands
    """))


@pytest.fixture
def walking_bot(make_runtime, tmp_path, database_url, bot):
    """The same bot with ``audit.hash_in_database: false``: every chain walked row by row in Python."""
    return make_runtime(write_config(tmp_path / "walking.yaml", database_url, extra="""
        audit:
          database: main
          columns: {writer: writer}
          snapshot_secret: ${AUDIT_SNAPSHOT_SECRET:-}
          fork_window: 2s
          hash_in_database: false
        limits: {per_user: "0", per_command: "0"}
    """))


def run(runtime, text):
    return runtime.engine.handle(text, Actor(ALICE), Where("C-ops", channel_name="ops")).result


# -- what hypothesis draws -------------------------------------------------------------------------

@dataclass
class Region:
    op: str
    lead: int  # clean rows before the operation's own rows
    arg: object = None  # edit: field; delete: rows; insert_bad: prevHash; skew: rows back; fork: seconds apart


@dataclass
class Plan:
    kind: str  # local | truncate | rewrite
    regions: list[Region]
    tail: int  # clean rows at the end
    snapshot_at: int | None = None  # local: before region i's own rows (len(regions): after the tail)
    cut: int = 0  # truncate: newest rows deleted; rewrite: tail row edited and re-hashed from (index)
    more: int = 0  # rewrite: rows appended afterwards
    notes: list[str] = field(default_factory=list)


def _arg(draw, op: str):
    return {
        "edit": lambda: draw(st.sampled_from(("actor", "action", "payload", '"createdAt"'))),
        "delete": lambda: draw(st.integers(1, 2)),
        "insert_bad": lambda: draw(st.sampled_from(("random", "self", "null", "linked", "older"))),
        "skew": lambda: draw(st.integers(0, 2)),
        "fork": lambda: draw(st.integers(-1500, 1500)) / 1000,
    }.get(op, lambda: None)()


@st.composite
def plans(draw) -> Plan:
    kind = draw(st.sampled_from(("local", "local", "truncate", "rewrite")))
    ops = draw(st.lists(st.sampled_from(LOCAL_OPS if kind == "local" else POST_HOC), max_size=3 if kind == "local"
                        else 2))
    regions = [Region(op, draw(st.integers(0 if i == 0 else 1, 2)), _arg(draw, op)) for i, op in enumerate(ops)]
    plan = Plan(kind, regions, draw(st.integers(1, 2)) if kind == "local" else draw(st.integers(3, 4)),
                notes=draw(st.lists(NOTES, min_size=1, max_size=3)))
    if kind == "local":
        clean = [i for i in range(len(regions) + 1) if all(r.op in POST_HOC for r in regions[:i])
                 and (i == len(regions) or regions[i].lead)]
        plan.snapshot_at = draw(st.none() | st.sampled_from(clean)) if clean else None
    else:
        plan.cut = draw(st.integers(1, plan.tail - 1))
        plan.more = draw(st.integers(0, 2)) if kind == "rewrite" else 0
    return plan


# -- writing, tampering, and the ground truth --------------------------------------------------------

@dataclass
class Truth:
    classes: set[str] = field(default_factory=set)
    failing: list[tuple[datetime, int]] = field(default_factory=list)  # (createdAt, id) of each failing row
    head: int | None = None  # the snapshot head, when a snapshot class applies
    rows: int = 0

    def fails(self, classes: set[str], row: tuple[datetime, int] | None) -> None:
        self.classes |= classes
        if row is not None:
            self.failing.append(row)

    def earliest(self) -> str | None:
        if self.failing:
            return str(min(self.failing)[1])
        return None if self.head is None else str(self.head)


class Tenant:
    """Writes one tenant's chain through the SQL appender, tampers with it, and says what the verifier must find."""

    def __init__(self, name: str, plan: Plan, conn, url: str, clock: datetime):
        self.name, self.plan, self.conn, self.url, self.clock = name, plan, conn, url, clock
        self.rows: list[tuple[datetime, int]] = []  # written by the appender, in write order
        self.truth = Truth()
        self.later: list = []  # post-hoc tampering, applied after every chain is written
        self.forged = self.deleted = 0
        self.snapshot_rows = 0

    # writing ---------------------------------------------------------------------------------------
    def append(self, created: datetime | None = None, writer: str = "node-a", conn=None) -> tuple[datetime, int]:
        n = len(self.rows)
        created = created or self.clock + STEP
        self.clock = max(self.clock, created)
        actor = ACTORS[n % len(ACTORS)]
        payload = json.dumps({"case": f"c-{n}", "note": self.plan.notes[n % len(self.plan.notes)]},
                             ensure_ascii=False)
        row_id = (conn or self.conn).execute(
            'INSERT INTO "AuditLog" ("tenantId", "createdAt", actor, action, payload, writer)'
            " VALUES (%s, %s, %s, 'case.update', %s, %s) RETURNING id",
            (self.name, created, actor and actor.format(writer=writer), payload, writer)).fetchone()[0]
        self.rows.append((created, row_id))
        return created, row_id

    def write(self, snapshot) -> None:
        """Every region and the tail; ``snapshot()`` is called where the plan takes one."""
        for index, region in enumerate(self.plan.regions):
            before = self.rows[-1] if self.rows else None
            for _ in range(region.lead):
                before = self.append()
            if self.plan.snapshot_at == index:
                self.snapshot_rows = snapshot(self.name)
            getattr(self, f"_{region.op}")(region, before if region.lead or index else None)
        for _ in range(self.plan.tail):
            self.append()
        if self.plan.snapshot_at == len(self.plan.regions) or self.plan.kind != "local":
            self.snapshot_rows = snapshot(self.name)

    def _next_row(self) -> int:
        """Index in self.rows of the row written after the current region (a clean one)."""
        return len(self.rows)

    def _edit(self, region: Region, before) -> None:
        created, row_id = self.append()
        value = {"actor": "NULL", "action": "'case.delete'", "payload": """'{"note": "✎ edited"}'""",
                 '"createdAt"': '"createdAt" + interval \'70 seconds\''}[region.arg]
        if region.arg == "actor" and ACTORS[(len(self.rows) - 1) % len(ACTORS)] is None:  # NULL already
            value = "'mallory@example.com'"
        self.later.append((f'UPDATE "AuditLog" SET {region.arg} = {value} WHERE id = %s', (row_id,)))
        moved = STEP + timedelta(seconds=10) if region.arg == '"createdAt"' else timedelta(0)
        self.truth.fails({"content_mismatch"}, (created + moved, row_id))

    def _delete(self, region: Region, before) -> None:
        gone = [self.append()[1] for _ in range(region.arg)]
        self.later.append(('DELETE FROM "AuditLog" WHERE id = ANY(%s)', (gone,)))
        self.deleted += len(gone)
        after = self._next_row()
        self.later.append(lambda: self.truth.fails({"link_break"}, self.rows[after]))

    def _insert_good(self, region: Region, before) -> None:
        self._forge(before, "good")

    def _insert_bad(self, region: Region, before) -> None:
        self._forge(before, region.arg)

    def _forge(self, before, variant: str) -> None:
        self.forged += 1
        forged_id = int(self.name[1:]) * 100 + self.forged  # below every id the appender hands out
        after = self._next_row()
        made_up = hashlib.sha256(f"{self.name}-{forged_id}".encode()).hexdigest()
        own = hashlib.sha256(f"own-{forged_id}".encode()).hexdigest()

        def forge() -> None:
            created = (before[0] + STEP / 2) if before else self.rows[after][0] - STEP / 2
            linked = f"(SELECT hash FROM \"AuditLog\" WHERE id = {before[1]})" if before else "NULL"
            older = self.rows[after - 2] if before and after >= 2 else None  # the row written before `before`
            prev = {"good": linked, "linked": linked, "random": f"'{made_up}'", "self": f"'{own}'", "null": "NULL",
                    "older": f"(SELECT hash FROM \"AuditLog\" WHERE id = {older[1]})" if older else f"'{made_up}'"
                    }[variant]
            digest = ("audit_v1_hash(prev, %(id)s, %(t)s, created, 'mallory@example.com', 'case.update', payload)"
                      if variant == "good" else f"'{own}'")
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("SET session_replication_role = replica")  # behind the appender's back
                conn.execute(f"""
                    INSERT INTO "AuditLog" (id, "tenantId", "createdAt", actor, action, payload, "prevHash", hash)
                    SELECT %(id)s, %(t)s, created, 'mallory@example.com', 'case.update', payload, prev, {digest}
                    FROM (SELECT %(created)s::timestamptz AS created, {prev}::text AS prev,
                                 '{{"case": "c-0", "status": "approved ✓"}}'::jsonb AS payload) f""",
                             {"id": forged_id, "t": self.name, "created": created})
            if variant == "good":
                self.truth.fails({"link_break"}, self.rows[after])
            else:
                self.truth.fails({"content_mismatch", "link_break"}, (created, forged_id))
            self.truth.rows += 1

        self.later.append(forge)

    def _skew(self, region: Region, before) -> None:
        jumped = [self.append() for _ in range(region.arg)]
        if jumped:
            backdated = self.append(jumped[0][0] - STEP / 2, writer="node-b")
            self.truth.fails({"clock_skew"}, backdated)
        else:
            self.append(self.clock + STEP - timedelta(seconds=10), writer="node-b")  # behind, still in order

    def _fork(self, region: Region, before) -> None:
        first_at = self.clock + STEP
        second_at = first_at + timedelta(seconds=region.arg)
        one, two = psycopg.connect(self.url), psycopg.connect(self.url)
        try:  # both transactions read the same head before either commits
            first = self.append(first_at, writer="node-a", conn=one)
            second = self.append(second_at, writer="node-c", conn=two)
            one.commit()
            two.commit()
        finally:
            one.close()
            two.close()
        self.truth.fails({"fork"}, max(first, second))

    # after every chain is written ------------------------------------------------------------------
    def tamper(self, chain: AuditChain) -> Truth:
        for step in self.later:
            if callable(step):
                step()
            else:
                chain.sql(*step)
        self.truth.rows += len(self.rows) - self.deleted
        getattr(self, f"_then_{self.plan.kind}")(chain)
        return self.truth

    def _then_local(self, chain: AuditChain) -> None:
        pass

    def _then_truncate(self, chain: AuditChain) -> None:
        counted, head = self.snapshot_rows, self.rows[-1]
        chain.sql('DELETE FROM "AuditLog" WHERE id = ANY(%s)', ([r[1] for r in self.rows[-self.plan.cut:]],))
        self.truth.rows -= self.plan.cut
        self.truth.fails({"truncated" if self.truth.rows < counted else "rewritten"}, None)
        self.truth.head = head[1]

    def _then_rewrite(self, chain: AuditChain) -> None:
        edited = self.rows[-self.plan.tail + self.plan.cut][1]
        chain.sql("""UPDATE "AuditLog" SET payload = '{"case": "c-1", "status": "approved"}' WHERE id = %s""",
                  (edited,))
        chain.rehash_from(self.name, edited)
        head = self.rows[-1]
        for _ in range(self.plan.more):
            self.append()
        self.truth.rows += self.plan.more
        self.truth.fails({"rewritten"}, None)
        self.truth.head = head[1]


# -- the property ----------------------------------------------------------------------------------

def reset(chain: AuditChain) -> None:
    chain.create()
    chain.sql('ALTER SEQUENCE "AuditLog_id_seq" RESTART WITH 1000')  # forged rows take ids below
    chain.sql("DELETE FROM opsbot.audit_snapshots")
    chain.sql("DELETE FROM opsbot.audit_runs")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(tenant_plans=st.lists(plans(), min_size=1, max_size=3))
def test_verify_agrees_with_the_oracle(database_url, bot, walking_bot, tenant_plans):
    chain = AuditChain(database_url)
    reset(chain)
    clock = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    tenants: list[Tenant] = []

    def snapshot(name: str) -> int:
        taken = run(bot, f"audit snapshot {name}")
        assert taken.status == "ok", taken.summary  # a valid chain must verify
        return taken.data["count"]

    with psycopg.connect(database_url, autocommit=True) as conn:
        for number, plan in enumerate(tenant_plans):
            tenant = Tenant(f"t{number + 1}", plan, conn, database_url, clock)
            tenant.write(snapshot)
            clock = tenant.clock + timedelta(hours=1)
            tenants.append(tenant)
        truths = {t.name: t.tamper(chain) for t in tenants}

    result = run(bot, "audit verify --all")
    walked = run(walking_bot, "audit verify --all")  # the database's screen changes no report, only who is walked
    assert result.data["tenants"] == walked.data["tenants"]

    reports = {t["tenant"]: t for t in result.data["tenants"]}
    for name, truth in truths.items():
        report = reports[name]
        note(f"{name}: {tenant_plans[int(name[1:]) - 1]}\n  truth {truth}\n  report {report}")
        for region in tenant_plans[int(name[1:]) - 1].regions:
            event(f"operation {region.op}" + (f" {region.arg}" if region.op in ("edit", "insert_bad") else ""))
        for kind in truth.classes:
            event(f"class {kind}")
        assert set(report["counts"]) == truth.classes, name
        earliest = report["findings"][0]["id"] if report["findings"] else None
        assert earliest == truth.earliest(), name
        assert report["rows"] == truth.rows, name
    assert result.data["valid"] == (not any(t.classes for t in truths.values()))
