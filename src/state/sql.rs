//! The two storage engines behind one handle: SQLite (embedded, the default) and PostgreSQL
//! (`DATABASE_URL`). Statements are written once with `$1`-style parameters, which both
//! engines accept; [`on_db!`] runs the same query code against whichever pool is open. The few
//! statements that differ name both forms with [`Db::pick`].

use sqlx::{PgPool, SqlitePool};

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the open pool (`&SqlitePool` or `&PgPool`); the body is
/// compiled once per engine, so its queries are typed against each.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::state::sql::Db::Sqlite($pool) => $body,
            $crate::state::sql::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

impl Db {
    /// The SQLite or the PostgreSQL form of a statement that differs between them.
    pub fn pick(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Db::Sqlite(_) => sqlite,
            Db::Postgres(_) => postgres,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

/// `$first, $first+1, …` for `rows` rows of `columns` parameters each, as `($1, $2), ($3, $4)`:
/// multi-row statements built for either engine.
pub fn placeholders(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * columns + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_number_every_parameter() {
        assert_eq!(super::placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::placeholders(1, 1), "($1)");
    }
}
