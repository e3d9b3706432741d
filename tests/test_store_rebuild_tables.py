"""`store rebuild` keeps the store's other tables: published results imported with `medpeft reference
import` live beside the runs table and must survive a rebuild unchanged."""

from __future__ import annotations

from medpeft_cli.duck import connect
from medpeft_cli.store import append
from medpeft_cli.store.rebuild import rebuild_store


def test_rebuild_copies_the_other_tables_unchanged(tmp_path):
    db = tmp_path / "results.duckdb"
    append(db, {"run_key": "k1", "status": "ok", "method": "bn", "dataset": "breastmnist", "backbone": "cifar_resnet20"})
    with connect(db) as con:
        con.execute("CREATE TABLE reference_results (source VARCHAR, value DOUBLE)")
        con.execute("INSERT INTO reference_results VALUES ('Dutt et al. 2024', 0.81), ('Dutt et al. 2024', 0.77)")
    (tmp_path / "runs").mkdir()

    plan = rebuild_store(db, [tmp_path / "runs"])

    assert plan.other_tables == ["reference_results"] and "tables copied unchanged: reference_results" in plan.summary()
    with connect(db, read_only=True) as con:
        assert con.execute("SELECT source, value FROM reference_results ORDER BY value").fetchall() == [
            ("Dutt et al. 2024", 0.77), ("Dutt et al. 2024", 0.81)]
        assert con.execute("SELECT run_key FROM runs").fetchall() == [("k1",)]  # kept: its run dir is elsewhere
