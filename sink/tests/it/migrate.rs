//! `migrate`: idempotent, concurrent-safe, versioned; the schema check names what differs.

use gallop_sink::{SinkError, AGGREGATES_TABLE};

use crate::common::{query, TestDb};

#[tokio::test]
async fn migrate_twice_and_from_two_clients_at_once() {
    let db = TestDb::new("migrate");
    let (a, b) = (db.connect().await, db.connect().await);
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.expect("first migrate"), rb.expect("second migrate"));
    let latest = a.schema().latest_version();
    assert_eq!((ra.to, rb.to), (latest, latest));
    a.check_schema().await.expect("schema matches after migrate");

    let again = a.migrate().await.expect("third migrate");
    assert_eq!((again.from, again.to, again.applied.clone()), (latest, latest, vec![]));
    let tables = query(&format!(
        "SELECT name FROM system.tables WHERE database = '{}' ORDER BY name FORMAT TSV",
        db.config.database
    ));
    assert_eq!(
        tables.lines().collect::<Vec<_>>(),
        [
            "aggregates",
            "leaderboard_day",
            "leaderboard_hour",
            "leaderboard_minute",
            "rollup_day",
            "rollup_hour",
            "rollup_minute",
            "schema_migrations"
        ]
    );
}

#[tokio::test]
async fn an_unmigrated_or_different_table_is_a_clear_error() {
    let db = TestDb::new("mismatch");
    let ch = db.connect().await;
    let err = ch.check_schema().await.expect_err("nothing migrated yet");
    assert!(err.to_string().contains("schema version 0") && err.to_string().contains("gallop migrate"), "{err}");

    ch.migrate().await.expect("migrate");
    let table = format!("`{}`.`{AGGREGATES_TABLE}`", db.config.database);
    // (`expires` cannot go: current servers refuse to drop the column the TTL reads.)
    query(&format!("ALTER TABLE {table} DROP COLUMN `top`"));
    let err = ch.check_schema().await.expect_err("column dropped");
    assert!(matches!(err, SinkError::SchemaMismatch { .. }), "{err:?}");
    let text = err.to_string();
    let schema = ch.schema();
    let expected = format!("column 10 is `expires {}`, expected `top {}`", schema.expires_type(), schema.top_type());
    assert!(text.contains(&expected), "{text}");

    query(&format!("ALTER TABLE {table} ADD COLUMN `top` {} AFTER value_count", schema.top_type()));
    ch.check_schema().await.expect("the same columns again");
    query(&format!("ALTER TABLE {table} ADD COLUMN note String"));
    let err = ch.check_schema().await.expect_err("column added");
    assert!(err.to_string().contains("unexpected extra column `note`"), "{err}");
}
