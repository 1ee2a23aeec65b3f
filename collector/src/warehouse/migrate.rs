//! Warehouse schema versions.
//!
//! Two kinds of tables, two kinds of versions:
//!
//! * **The collector's own tables** (`loads`, `rejected_records`, `alerts`,
//!   `tollstream_table_versions`) change only with the collector's code: numbered
//!   migrations, recorded in `tollstream_migrations`, applied in order at start. A
//!   database migrated by a newer collector is refused rather than written by an older one.
//! * **Stream tables** change with the config. Each change of a table's definition is a new
//!   row in `tollstream_table_versions` (table, version, the [`Schema`] as JSON). At start
//!   the config's schema is compared with the table ([`plan`]): a new table is created; a
//!   column added in the config is added to the table (nullable: rows loaded before have
//!   no value); a column that became optional loses its NOT NULL; anything that would
//!   change what stored values mean — a column removed or changed in type or scale, a
//!   different natural key — is refused with a message that says what to do.
//!
//! The backends run the SQL; this module decides what to run.

use super::WarehouseError;
use crate::schema::{Column, ColumnType, LOADER_COLUMNS, Schema};

/// The collector's own tables' newest migration, which both backends implement.
pub const LATEST: i64 = 3;

/// What each numbered migration does (index = version − 1), for the record.
pub const MIGRATIONS: [&str; LATEST as usize] = [
    "load manifest and rejected records",
    "stream table versions",
    "alerts",
];

/// One column of a stream table as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingColumn {
    /// Column name.
    pub name: String,
    /// Its type, as the backend's [`Dialect::type_name`] spells it.
    pub sql_type: String,
    /// Declared NOT NULL.
    pub not_null: bool,
}

/// A stream table that exists.
#[derive(Debug, Clone, Default)]
pub struct ExistingTable {
    /// Its columns.
    pub columns: Vec<ExistingColumn>,
    /// The columns of its primary key (none: no primary key).
    pub primary_key: Vec<String>,
    /// The newest recorded definition and its version; none for a table made by a
    /// collector before versions were recorded, or by hand.
    pub recorded: Option<(i64, Schema)>,
}

/// What to do to a stream table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It does not exist: create it, record version 1.
    Create,
    /// It matches the config: nothing.
    Unchanged,
    /// Record the config's definition as `version`, after these changes (which may be none
    /// when only checks changed, or when the table predates recorded versions).
    Change {
        /// The version to record.
        version: i64,
        /// Columns to add, nullable.
        add: Vec<Column>,
        /// Columns whose NOT NULL to drop.
        drop_not_null: Vec<String>,
    },
}

/// How a backend spells types.
pub trait Dialect {
    /// The SQL type of a column.
    fn type_name(&self, ty: &ColumnType) -> &'static str;
    /// Whether NOT NULL can be dropped from a column in place.
    fn can_drop_not_null(&self) -> bool;
}

/// Decides what to do to `table` so it holds `schema`'s rows.
///
/// # Errors
/// [`WarehouseError::Incompatible`] naming the column and what to do.
pub fn plan(
    stream: &str,
    table: &str,
    schema: &Schema,
    existing: Option<&ExistingTable>,
    dialect: &dyn Dialect,
) -> Result<Plan, WarehouseError> {
    let Some(existing) = existing else {
        return Ok(Plan::Create);
    };
    let refuse = |what: String| {
        WarehouseError::Incompatible(format!(
            "stream {stream}: table {table} {what}. tollstream changes a table only by adding \
             columns: give the stream a new table (streams.{stream}.table) and `reload` the \
             archive into it, or change the table by hand first (for a decimal scale, also \
             record the new definition: see the README's Stream schemas)"
        ))
    };
    if let Some((_, recorded)) = &existing.recorded {
        if recorded == schema {
            return Ok(Plan::Unchanged);
        }
        for old in &recorded.columns {
            let Some(new) = schema.column(&old.column) else {
                continue; // Said below, from the table itself.
            };
            let same = match (&old.ty, &new.ty) {
                (ColumnType::Integer { .. }, ColumnType::Integer { .. }) => true,
                (a, b) => a == b,
            };
            if !same {
                return Err(refuse(format!(
                    "stores column {} as {} but the config now says {}: stored values would change meaning",
                    old.column,
                    describe(&old.ty),
                    describe(&new.ty)
                )));
            }
        }
    }
    // The key as the table has it (not as recorded): a key changed by hand counts.
    let mut table_key = existing.primary_key.clone();
    let mut config_key = schema.unique_key.clone();
    table_key.sort();
    config_key.sort();
    if table_key != config_key {
        return Err(refuse(format!(
            "has the natural key ({}) but the config says ({})",
            existing.primary_key.join(", "),
            schema.unique_key.join(", ")
        )));
    }
    for column in &existing.columns {
        if LOADER_COLUMNS.contains(&column.name.as_str()) {
            continue;
        }
        if schema.column(&column.name).is_none() {
            return Err(refuse(format!(
                "has a column {} that is not in streams.{stream}.schema.columns (tollstream never drops a column: put it back, with `optional: true` if new lines lack it, or drop it yourself with ALTER TABLE {table} DROP COLUMN {})",
                column.name, column.name
            )));
        }
    }
    let mut add = Vec::new();
    let mut drop_not_null = Vec::new();
    for column in &schema.columns {
        let Some(found) = existing.columns.iter().find(|c| c.name == column.column) else {
            if schema.unique_key.contains(&column.column) {
                return Err(refuse(format!(
                    "lacks the key column {}, which cannot be added to rows already loaded",
                    column.column
                )));
            }
            add.push(column.clone());
            continue;
        };
        let wanted = dialect.type_name(&column.ty);
        if !found.sql_type.eq_ignore_ascii_case(wanted) {
            return Err(refuse(format!(
                "has column {} of type {} but the config's {} needs {wanted}",
                column.column,
                found.sql_type,
                describe(&column.ty)
            )));
        }
        if column.optional && found.not_null {
            if !dialect.can_drop_not_null() {
                return Err(refuse(format!(
                    "declares column {} NOT NULL and the config makes it optional, which SQLite cannot change in place",
                    column.column
                )));
            }
            drop_not_null.push(column.column.clone());
        }
    }
    let version = existing.recorded.as_ref().map_or(1, |(v, _)| v + 1);
    Ok(Plan::Change {
        version,
        add,
        drop_not_null,
    })
}

/// The statements that carry out `plan` for `table` — then its index statements, which
/// are idempotent — and the version to record in `tollstream_table_versions`, if any.
pub fn steps(
    plan: Plan,
    stream: &str,
    table: &str,
    schema: &Schema,
    dialect: &dyn Dialect,
) -> (Vec<String>, Option<i64>) {
    let (mut statements, version) = match plan {
        Plan::Unchanged => (Vec::new(), None),
        Plan::Create => (vec![create_table_sql(table, schema, dialect)], Some(1)),
        Plan::Change {
            version,
            add,
            drop_not_null,
        } => {
            if !add.is_empty() {
                tracing::info!(stream, table, version, columns = ?add.iter().map(|c| &c.column).collect::<Vec<_>>(), "Adding the config's new columns to the stream table.");
            }
            (
                alter_sql(table, &add, &drop_not_null, dialect),
                Some(version),
            )
        }
    };
    statements.push(index_sql(table, schema));
    (statements, version)
}

fn describe(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Text => "text".into(),
        ColumnType::Uuid => "uuid".into(),
        ColumnType::Integer { .. } => "integer".into(),
        ColumnType::Decimal { scale } => format!("decimal with scale {scale}"),
        ColumnType::Timestamp => "timestamp".into(),
        ColumnType::Boolean => "boolean".into(),
    }
}

/// Refuses a database whose own tables a newer collector migrated.
///
/// # Errors
/// [`WarehouseError::Incompatible`].
pub fn check_not_newer(applied: i64) -> Result<(), WarehouseError> {
    if applied > LATEST {
        return Err(WarehouseError::Incompatible(format!(
            "the warehouse's tables are at migration {applied}, newer than this collector knows ({LATEST}): \
             a newer tollstream-collector has used it; upgrade this one"
        )));
    }
    Ok(())
}

/// `CREATE TABLE` for a stream table, its natural key and the loader's columns, with
/// `type_name` spelling types; then one `CREATE INDEX IF NOT EXISTS` per indexed column.
pub fn create_table_sql(table: &str, schema: &Schema, dialect: &dyn Dialect) -> String {
    use std::fmt::Write as _;
    let mut ddl = format!("CREATE TABLE IF NOT EXISTS {table} (\n");
    for c in &schema.columns {
        let null = if c.optional { "" } else { " NOT NULL" };
        let _ = writeln!(ddl, "    {} {}{null},", c.column, dialect.type_name(&c.ty));
    }
    let text = dialect.type_name(&ColumnType::Text);
    let time = dialect.type_name(&ColumnType::Timestamp);
    let int = dialect.type_name(&ColumnType::Integer { min: 0, max: 0 });
    // `load_id` is the manifest row of the load that inserted the row. Not declared as a
    // foreign key: the loader writes both in one transaction, and PostgreSQL would check it
    // with one lookup per row (measured: 100,000 rows inserted in 1.7 s instead of 0.9 s).
    let _ = write!(
        ddl,
        "    source {text} NOT NULL,\n    received_at {time} NOT NULL,\n    load_id {int} NOT NULL"
    );
    if !schema.unique_key.is_empty() {
        let _ = write!(ddl, ",\n    PRIMARY KEY ({})", schema.unique_key.join(", "));
    }
    ddl.push_str("\n);\n");
    ddl.push_str(&index_sql(table, schema));
    ddl
}

/// `CREATE INDEX IF NOT EXISTS` for every indexed column.
pub fn index_sql(table: &str, schema: &Schema) -> String {
    schema
        .columns
        .iter()
        .filter(|c| c.index)
        .map(|c| {
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {table} ({});\n",
                index_name(table, &c.column),
                c.column
            )
        })
        .collect()
}

/// `<table>_<column>`, cut to PostgreSQL's 63 bytes and told apart by a hash when long.
fn index_name(table: &str, column: &str) -> String {
    let name = format!("{table}_{column}");
    if name.len() <= 63 {
        name
    } else {
        format!("{}_{:08x}", &name[..54], crc32fast::hash(name.as_bytes()))
    }
}

/// `ALTER TABLE` statements for a [`Plan::Change`].
pub fn alter_sql(
    table: &str,
    add: &[Column],
    drop_not_null: &[String],
    dialect: &dyn Dialect,
) -> Vec<String> {
    let mut statements: Vec<String> = add
        .iter()
        .map(|c| {
            format!(
                "ALTER TABLE {table} ADD COLUMN {} {}",
                c.column,
                dialect.type_name(&c.ty)
            )
        })
        .collect();
    statements.extend(
        drop_not_null
            .iter()
            .map(|c| format!("ALTER TABLE {table} ALTER COLUMN {c} DROP NOT NULL")),
    );
    statements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaConfig;

    struct Sqlite;
    impl Dialect for Sqlite {
        fn type_name(&self, ty: &ColumnType) -> &'static str {
            match ty {
                ColumnType::Integer { .. } | ColumnType::Decimal { .. } | ColumnType::Boolean => {
                    "INTEGER"
                }
                _ => "TEXT",
            }
        }
        fn can_drop_not_null(&self) -> bool {
            false
        }
    }

    fn table_of(schema: &Schema, recorded: bool) -> ExistingTable {
        let mut columns: Vec<ExistingColumn> = schema
            .columns
            .iter()
            .map(|c| ExistingColumn {
                name: c.column.clone(),
                sql_type: Sqlite.type_name(&c.ty).into(),
                not_null: !c.optional,
            })
            .collect();
        columns.extend(LOADER_COLUMNS.map(|name| ExistingColumn {
            name: name.into(),
            sql_type: "TEXT".into(),
            not_null: true,
        }));
        ExistingTable {
            columns,
            primary_key: schema.unique_key.clone(),
            recorded: recorded.then(|| (1, schema.clone())),
        }
    }

    fn toll_with(edit: impl FnOnce(&mut SchemaConfig)) -> Schema {
        let mut config = SchemaConfig::toll();
        edit(&mut config);
        config.build().expect("valid")
    }

    #[test]
    fn a_missing_table_is_created_and_an_identical_one_left_alone() {
        let toll = Schema::toll();
        assert_eq!(
            plan("s", "t", &toll, None, &Sqlite).expect("ok"),
            Plan::Create
        );
        let same = table_of(&toll, true);
        assert_eq!(
            plan("s", "t", &toll, Some(&same), &Sqlite).expect("ok"),
            Plan::Unchanged
        );
        // A table made before versions were recorded is adopted as version 1.
        let adopted = table_of(&toll, false);
        assert_eq!(
            plan("s", "t", &toll, Some(&adopted), &Sqlite).expect("ok"),
            Plan::Change {
                version: 1,
                add: vec![],
                drop_not_null: vec![]
            }
        );
    }

    #[test]
    fn a_column_added_in_the_config_is_added_to_the_table() {
        let toll = Schema::toll();
        let wider = toll_with(|c| {
            let mut note = c.columns[2].clone();
            note.name = "plate".into();
            c.columns.push(note);
        });
        let Plan::Change { version, add, .. } =
            plan("s", "t", &wider, Some(&table_of(&toll, true)), &Sqlite).expect("ok")
        else {
            panic!("a change")
        };
        assert_eq!(version, 2);
        assert_eq!(add.len(), 1);
        assert_eq!(add[0].column, "plate");
        assert_eq!(
            alter_sql("t", &add, &[], &Sqlite),
            ["ALTER TABLE t ADD COLUMN plate TEXT"]
        );
    }

    #[test]
    fn incompatible_changes_are_refused_with_what_to_do() {
        let toll = Schema::toll();
        let existing = table_of(&toll, true);
        let refused = |schema: &Schema| {
            plan("s", "t", schema, Some(&existing), &Sqlite)
                .expect_err("refused")
                .to_string()
        };
        let rescaled = toll_with(|c| c.columns[7].scale = Some(3));
        let why = refused(&rescaled);
        assert!(
            why.contains("stores column amount_cents as decimal with scale 2 but the config now says decimal with scale 3"),
            "{why}"
        );
        assert!(why.contains("streams.s.table"), "{why}");
        let fewer = toll_with(|c| {
            c.columns.remove(5);
        });
        assert!(refused(&fewer).contains("has a column transponder_id that is not in"));
        let retyped = toll_with(|c| {
            c.columns[3].ty = crate::schema::TypeName::Text;
            (c.columns[3].min, c.columns[3].max) = (None, None);
        });
        let why = refused(&retyped);
        assert!(
            why.contains("stores column lane as integer but the config now says text"),
            "{why}"
        );
        let rekeyed = toll_with(|c| {
            c.unique_key = Some(crate::schema::KeyConfig::Many(vec![
                "transaction_id".into(),
                "booth_id".into(),
            ]))
        });
        assert!(refused(&rekeyed).contains("natural key (transaction_id)"));
        let optional = toll_with(|c| c.columns[4].optional = true);
        assert!(refused(&optional).contains("SQLite cannot change in place"));
        // Narrower integer bounds only change what is accepted from now on.
        let bounds = toll_with(|c| c.columns[3].max = Some(16));
        assert!(matches!(
            plan("s", "t", &bounds, Some(&existing), &Sqlite),
            Ok(Plan::Change { version: 2, .. })
        ));
    }

    #[test]
    fn a_database_from_a_newer_collector_is_refused() {
        check_not_newer(LATEST).expect("this version");
        let why = check_not_newer(LATEST + 1).expect_err("newer").to_string();
        assert!(why.contains("upgrade this one"), "{why}");
    }

    #[test]
    fn tables_get_a_composite_key_and_their_indexes() {
        let schema = toll_with(|c| {
            c.unique_key = Some(crate::schema::KeyConfig::Many(vec![
                "booth_id".into(),
                "transaction_id".into(),
            ]))
        });
        let ddl = create_table_sql("t", &schema, &Sqlite);
        assert!(
            ddl.contains("PRIMARY KEY (booth_id, transaction_id)"),
            "{ddl}"
        );
        assert!(ddl.contains("CREATE INDEX IF NOT EXISTS t_event_time ON t (event_time);"));
        let long = "x".repeat(60);
        assert!(index_name(&long, "event_time").len() <= 63);
    }
}
