"""``audit verify`` attacked at the edges: the chain's start and end, neighbouring tampering, NULLs, equal times.

Each test says what was done and what a correct diagnosis is; the differential property
test (tests/test_audit_oracle.py) covers the operations one region at a time.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.conftest import write_config
from tests.support.audit import AuditChain
from tests.test_audit import run, tenant

SECOND = timedelta(seconds=1)


@pytest.fixture
def chain(database_url):
    return AuditChain(database_url).create()


@pytest.fixture
def bot(make_runtime, tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("AUDIT_SNAPSHOT_SECRET", "attack-snapshot-secret")
    return make_runtime(write_config(tmp_path / "app.yaml", database_url, extra="""
        audit:
          database: main
          columns: {writer: writer}
          snapshot_secret: ${AUDIT_SNAPSHOT_SECRET:-}
          fork_window: 2s
    """))


def verify(bot, name="tenant-a"):
    return tenant(run(bot, f"audit verify {name}"), name)


def found(report):
    return [(f["kind"], f["id"]) for f in report["findings"]]


# -- the chain's start and end ---------------------------------------------------------------------

def test_a_forged_first_row_with_a_made_up_link(chain, bot):
    ids = chain.append("tenant-a", 4, step=60)
    chain.forge("tenant-a", 999, chain.rows("tenant-a")[0][1] - 30 * SECOND, "a" * 64, "b" * 64)

    report = verify(bot)

    assert found(report) == [("content_mismatch", "999"), ("link_break", "999")]
    message = report["findings"][1]["message"]
    assert message.startswith("the first row links to a hash no row in the chain has")
    assert f"row {ids[0]} after it links past it to the chain start: it was inserted" in message
    assert report["findings"][1]["expected"] is None  # the first row's link should be NULL


def test_a_forged_first_row_hashed_correctly_claims_the_chain_start(chain, bot):
    ids = chain.append("tenant-a", 4, step=60)
    chain.forge("tenant-a", 999, chain.rows("tenant-a")[0][1] - 30 * SECOND, None)

    report = verify(bot)

    assert found(report) == [("link_break", str(ids[0]))]
    assert "rows 999 and" in report["findings"][0]["message"]
    assert "both claim the chain start as predecessor" in report["findings"][0]["message"]


def test_a_forged_last_row_with_a_made_up_link(chain, bot):
    chain.append("tenant-a", 4, step=60)
    chain.forge("tenant-a", 999, chain.rows("tenant-a")[-1][1] + 30 * SECOND, "a" * 64, "b" * 64)

    report = verify(bot)

    assert found(report) == [("content_mismatch", "999"), ("link_break", "999")]
    assert report["findings"][1]["expected"] == chain.rows("tenant-a")[-2][3]


def test_a_forged_last_row_hashed_and_linked_correctly_is_an_append(chain, bot):
    """Nothing tells it from the application's own append: the chain is valid (export and compare heads)."""
    chain.append("tenant-a", 4, step=60)
    head = chain.rows("tenant-a")[-1]
    chain.forge("tenant-a", 999, head[1] + 30 * SECOND, head[3])

    assert verify(bot)["valid"]


def test_a_backdated_first_append_is_clock_skew_not_a_new_chain(chain, bot):
    ids = chain.append("tenant-a", 3, step=60)
    chain.clock = chain.rows("tenant-a")[0][1] - 90 * SECOND - timedelta(seconds=60)  # dated before every row
    skewed = chain.append("tenant-a", 1, writer="node-b", step=60)
    chain.clock = chain.rows("tenant-a")[-1][1]
    chain.append("tenant-a", 2, step=60)

    report = verify(bot)

    assert found(report) == [("clock_skew", str(skewed[0]))]
    assert report["findings"][0]["detail"]["predecessor"] == str(ids[2])


# -- neighbours ----------------------------------------------------------------------------------

def test_two_adjacent_deletes_are_one_break_showing_the_hash_it_should_have(chain, bot):
    ids = chain.append("tenant-a", 7)
    before = chain.rows("tenant-a")[1][3]
    chain.sql('DELETE FROM "AuditLog" WHERE id = ANY(%s)', ([ids[2], ids[3]],))

    report = verify(bot)

    assert found(report) == [("link_break", str(ids[4]))]
    assert report["findings"][0]["expected"] == before and "deleted" in report["findings"][0]["message"]


def test_a_delete_between_two_edited_rows(chain, bot):
    ids = chain.append("tenant-a", 7)
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[3],))
    chain.sql("""UPDATE "AuditLog" SET action = 'case.delete' WHERE id = ANY(%s)""", ([ids[2], ids[4]],))

    report = verify(bot)

    assert found(report) == [("content_mismatch", str(ids[2])), ("content_mismatch", str(ids[4])),
                             ("link_break", str(ids[4]))]
    assert report["findings"][2]["expected"] == chain.rows("tenant-a")[2][3]


def test_a_deleted_fork_point_loses_neither_forked_row(chain, bot):
    ids = chain.append("tenant-a", 3, step=60)
    head = chain.rows("tenant-a")[-1]
    chain.forge("tenant-a", 998, head[1] + 60 * SECOND, head[3])
    chain.forge("tenant-a", 999, head[1] + 61 * SECOND, head[3])  # a second writer, a second later
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[2],))

    report = verify(bot)

    assert found(report) == [("link_break", "998"), ("fork", "999")]


def test_a_forged_pair_linked_to_each_other_is_one_insertion(chain, bot):
    ids = chain.append("tenant-a", 5, step=60)
    rows = chain.rows("tenant-a")
    chain.forge("tenant-a", 998, rows[1][1] + 20 * SECOND, "a" * 64)
    forged = chain.rows("tenant-a")[2]
    chain.forge("tenant-a", 999, rows[1][1] + 40 * SECOND, forged[3])

    report = verify(bot)

    assert found(report) == [("link_break", "998")]
    assert f"row {ids[2]} after it links past it to row {ids[1]}" in report["findings"][0]["message"]


# -- NULLs and odd values ----------------------------------------------------------------------------

def test_null_fields(chain, bot):
    ids = chain.append("tenant-a", 8, step=60, payload='{"note": "naïve café ✓ 中文 😀", "tab": "\\t"}')
    rows = chain.rows("tenant-a")
    chain.sql('UPDATE "AuditLog" SET actor = NULL WHERE id = %s', (ids[1],))  # a NULL is an edit too
    chain.forge("tenant-a", 999, rows[3][1] + 30 * SECOND, None, actor=None)  # restarts the chain mid-way
    chain.sql("""UPDATE "AuditLog" SET hash = '' WHERE id = %s""", (ids[6],))  # a hash emptied

    result = run(bot, "audit verify tenant-a")

    report = tenant(result, "tenant-a")
    assert found(report) == [("content_mismatch", str(ids[1])), ("link_break", "999"),
                             ("content_mismatch", str(ids[6])), ("link_break", str(ids[7]))]
    assert "both claim the chain start as predecessor" in report["findings"][1]["message"]
    assert report["findings"][3]["expected"] == ""  # the stored hash of the row before it, empty
    assert "expected (empty)" in result.sections[0].text and "expected `NULL`" not in result.sections[0].text


# -- equal times -------------------------------------------------------------------------------------

def test_appends_in_the_same_millisecond_verify(chain, bot):
    chain.append("tenant-a", 5, step=0)
    assert verify(bot)["valid"]


def test_a_forged_row_dated_with_its_predecessor_sorts_before_it_and_is_still_an_insertion(chain, bot):
    """Same createdAt, lower id: the forged row sorts before the row it links to. Not clock skew."""
    ids = chain.append("tenant-a", 5, step=60)
    predecessor = chain.rows("tenant-a")[2]
    chain.forge("tenant-a", 0, predecessor[1], predecessor[3])  # ids start at 1

    report = verify(bot)

    assert found(report) == [("link_break", str(ids[3]))]
    message = report["findings"][0]["message"]
    assert "rows 0 and" in message and "inserted" in message and report["reordered"] == 1


def test_a_forged_row_backdated_before_its_predecessor_is_an_insertion_not_clock_skew(chain, bot):
    ids = chain.append("tenant-a", 5, step=60)
    predecessor = chain.rows("tenant-a")[2]
    chain.forge("tenant-a", 999, predecessor[1] - 30 * SECOND, predecessor[3])

    report = verify(bot)

    assert found(report) == [("link_break", str(ids[3]))]
    assert "clock_skew" not in report["counts"]


def test_a_fork_in_the_same_millisecond(chain, bot):
    chain.append("tenant-a", 3, step=60)
    head = chain.rows("tenant-a")[-1]
    first, second = psycopg.connect(chain.url), psycopg.connect(chain.url)
    try:
        for conn, node in ((first, "node-a"), (second, "node-b")):
            conn.execute("""INSERT INTO "AuditLog" ("tenantId", "createdAt", actor, action, writer)
                            VALUES ('tenant-a', %s, %s, 'case.update', %s)""", (head[1] + 60 * SECOND, node, node))
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    chain.clock = head[1] + 60 * SECOND
    chain.append("tenant-a", 2, step=60)

    report = verify(bot)

    assert [f["kind"] for f in report["findings"]] == ["fork"]
    assert "0.000 s apart" in report["findings"][0]["message"]


# -- snapshots -----------------------------------------------------------------------------------------

def test_a_slow_writer_appending_after_a_snapshot_is_not_a_truncation(chain, bot):
    chain.append("tenant-a", 5, step=60)
    assert run(bot, "audit snapshot tenant-a").status == "ok"
    chain.clock -= 90 * SECOND  # dated before the snapshot head, linked after it
    skewed = chain.append("tenant-a", 1, writer="node-b", step=0)
    chain.clock += 90 * SECOND
    chain.append("tenant-a", 1, step=60)

    report = verify(bot)

    assert found(report) == [("clock_skew", str(skewed[0]))]


def test_a_delete_before_the_snapshot_head_is_a_link_break_not_a_truncation(chain, bot):
    ids = chain.append("tenant-a", 6)
    assert run(bot, "audit snapshot tenant-a").status == "ok"
    chain.sql('DELETE FROM "AuditLog" WHERE id = %s', (ids[2],))

    report = verify(bot)

    assert found(report) == [("link_break", str(ids[3]))]


def test_a_slow_writer_after_a_snapshot_is_clock_skew_in_an_incremental_verification_too(chain, bot):
    """Its row sorts before the snapshot head, where the increment does not read: the whole chain explains it."""
    chain.append("tenant-a", 5, step=60)
    assert run(bot, "audit snapshot tenant-a").status == "ok"
    chain.clock -= 90 * SECOND
    skewed = chain.append("tenant-a", 1, writer="node-b", step=0)
    chain.clock += 90 * SECOND
    chain.append("tenant-a", 1, step=60)

    result = run(bot, "audit verify tenant-a --since-snapshot")

    assert found(tenant(result, "tenant-a")) == [("clock_skew", str(skewed[0]))]
    assert result.data["mode"] == "full" and any("whole chain" in note for note in result.data["notes"])


def test_a_forged_row_after_a_snapshot_in_an_incremental_verification(chain, bot):
    chain.append("tenant-a", 5, step=60)
    assert run(bot, "audit snapshot tenant-a").status == "ok"
    new = chain.append("tenant-a", 3, step=60)
    rows = chain.rows("tenant-a")
    chain.forge("tenant-a", 999, rows[5][1] + 30 * SECOND, "a" * 64, "a" * 64)

    result = run(bot, "audit verify tenant-a --since-snapshot")

    report = tenant(result, "tenant-a")
    assert found(report) == [("content_mismatch", "999"), ("link_break", "999")]
    assert report["findings"][1]["position"] == 7 and report["findings"][1]["expected"] == rows[5][3]
    assert f"row {new[1]} after it links past it to row {new[0]}" in report["findings"][1]["message"]


# -- edited dates, edited tails -------------------------------------------------------------------------

def test_two_swapped_dates_are_two_edits_not_clock_skew(chain, bot):
    ids = chain.append("tenant-a", 6, step=60)
    chain.sql("""UPDATE "AuditLog" a SET "createdAt" = b."createdAt" FROM "AuditLog" b
                 WHERE (a.id, b.id) IN ((%s, %s), (%s, %s))""", (ids[2], ids[3], ids[3], ids[2]))

    report = verify(bot)

    assert found(report) == [("content_mismatch", str(ids[3])), ("content_mismatch", str(ids[2]))]


def test_a_date_moved_past_the_next_row_is_an_edit(chain, bot):
    ids = chain.append("tenant-a", 6, step=60)
    chain.sql("""UPDATE "AuditLog" SET "createdAt" = "createdAt" + interval '70 seconds' WHERE id = %s""", (ids[2],))

    report = verify(bot)

    assert found(report) == [("content_mismatch", str(ids[2]))] and report["findings"][0]["position"] == 4


def test_the_newest_rows_edited_after_a_snapshot_are_tampering_not_a_scheme_change(chain, bot):
    ids = chain.append("tenant-a", 6)
    assert run(bot, "audit snapshot tenant-a").status == "ok"
    chain.sql("""UPDATE "AuditLog" SET action = 'case.delete' WHERE id = ANY(%s)""", (ids[3:],))

    result = run(bot, "audit verify tenant-a")

    assert found(tenant(result, "tenant-a")) == [("content_mismatch", str(i)) for i in ids[3:]]
    assert "tampering or data loss suspected" in result.summary


def test_the_newest_rows_edited_without_a_snapshot_look_like_a_scheme_change(chain, bot):
    """A known limit: rows failing their hash from one on, links intact, are what a new writer release
    produces too. Only a snapshot that verified those rows tells the two apart (test above)."""
    ids = chain.append("tenant-a", 6)
    chain.sql("""UPDATE "AuditLog" SET action = 'case.delete' WHERE id = ANY(%s)""", (ids[3:],))

    assert found(verify(bot)) == [("scheme_suspect", str(ids[3]))]


def test_rows_forged_at_the_end_with_made_up_links_are_not_a_scheme_change(chain, bot):
    chain.append("tenant-a", 4, step=60)
    head = chain.rows("tenant-a")[-1]
    for n in range(3):
        chain.forge("tenant-a", 997 + n, head[1] + (n + 1) * 60 * SECOND, f"{n}" * 64, f"{n + 5}" * 64)

    report = verify(bot)

    assert set(report["counts"]) == {"content_mismatch", "link_break"} and report["counts"]["link_break"] == 3
    assert report["findings"][0]["id"] == "997"


# -- the window -----------------------------------------------------------------------------------------

def test_a_clock_behind_by_more_rows_than_the_window_is_still_clock_skew(chain, make_runtime, tmp_path,
                                                                         database_url):
    small = make_runtime(write_config(tmp_path / "small.yaml", database_url, extra="""
        audit: {database: main, columns: {writer: writer}, window: 16}
    """))
    chain.append("tenant-a", 3, step=60)
    jumped = chain.append("tenant-a", 20, step=60)
    chain.clock = chain.rows("tenant-a")[3][1] - 90 * SECOND  # dated before all 20, linked after them
    skewed = chain.append("tenant-a", 1, writer="node-b", step=60)
    chain.clock = chain.rows("tenant-a")[-1][1]
    chain.append("tenant-a", 2, step=60)

    report = verify(small)

    assert found(report) == [("clock_skew", str(skewed[0]))]
    assert report["findings"][0]["detail"]["predecessor"] == str(jumped[-1])
