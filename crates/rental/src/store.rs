//! Where a domain's rows live: [`Store`], one table in SQLite (embedded, the default) or
//! PostgreSQL, through `common::sql`, chosen by [`crate::Config::database_url`].
//!
//! A store holds only its domain's table (`units`, `transactions` or `documents`); each domain
//! has a database of its own, so nothing joins across domains. Every statement is one text with
//! `$N` parameters for both engines; only the id column (SQLite's `INTEGER PRIMARY KEY`,
//! PostgreSQL's `BIGSERIAL`) and the seeding transaction differ per engine. Times are RFC 3339
//! UTC text (`common::time`), the same in both engines, so their answers are identical.

use std::time::Duration;

use api::wire::rental::{Document, NewTransaction, NewUnit, Transaction, Unit, UnitChange};
use common::sql::{self, Arg, Db, Pool, Row, Schema};
use common::time::now_rfc3339;

use crate::{Config, Domain, Error, seed};

/// The DDL of one table: the id column per engine, then `$columns` (and any index after it).
macro_rules! table {
    ($name:literal, $columns:literal $(, $index:literal)?) => {
        Schema {
            sqlite: concat!(
                "CREATE TABLE IF NOT EXISTS ", $name, " (\n    id INTEGER PRIMARY KEY,", $columns, ");"
                $(, $index)?
            ),
            postgres: concat!(
                "CREATE TABLE IF NOT EXISTS ", $name, " (\n    id BIGSERIAL PRIMARY KEY,", $columns, ");"
                $(, $index)?
            ),
        }
    };
}

const UNITS: Schema = table!(
    "units",
    "
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    bedrooms BIGINT NOT NULL,
    monthly_rent_cents BIGINT NOT NULL,
    status TEXT NOT NULL,
    updated_at TEXT NOT NULL
"
);

const TRANSACTIONS: Schema = table!(
    "transactions",
    "
    unit_id BIGINT NOT NULL,
    month TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
",
    "
CREATE INDEX IF NOT EXISTS transactions_unit_month ON transactions (unit_id, month);"
);

const DOCUMENTS: Schema = table!(
    "documents",
    "
    unit_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT NOT NULL,
    updated_at TEXT NOT NULL
",
    "
CREATE INDEX IF NOT EXISTS documents_unit ON documents (unit_id);"
);

const UNIT_COLUMNS: &str = "id, name, address, bedrooms, monthly_rent_cents, status, updated_at";
const TRANSACTION_COLUMNS: &str = "id, unit_id, month, kind, amount_cents, description, created_at";
const DOCUMENT_COLUMNS: &str = "id, unit_id, kind, status, title, updated_at";

/// One domain's table in its database.
#[derive(Debug)]
pub(crate) struct Store {
    /// Which table this store holds (and seeds).
    domain: Domain,
    db: Db,
}

impl Store {
    /// Opens the database `config` names for `domain` (absent: `<data_dir>/<domain>.sqlite`) and
    /// creates the domain's table if needed (on PostgreSQL, at the first statement).
    pub(crate) async fn open(domain: Domain, config: &Config) -> Result<Store, Error> {
        let schema = match domain {
            Domain::Units => UNITS,
            Domain::Finances => TRANSACTIONS,
            Domain::Legal => DOCUMENTS,
        };
        let options = sql::Options {
            max_connections: 16,
            // A database that does not answer within this is reported as unavailable (503) rather
            // than holding requests until the stack's timeout.
            acquire_timeout: Duration::from_secs(5),
            ..sql::Options::default()
        };
        let db = match config.database_url.as_deref() {
            None => {
                let path = config.data_dir.join(format!("{}.sqlite", domain.name()));
                Db::open_file(&path, schema, options).await?
            }
            Some(url) => Db::open(url, schema, options).await?,
        };
        Ok(Store { domain, db })
    }

    /// The engine's name, for logs (`sqlite`, `postgres`).
    pub(crate) fn engine(&self) -> &'static str {
        self.db.engine().as_str()
    }

    /// Checks that the database answers (`GET /ready`).
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        Ok(self.db.ping().await?)
    }

    /// Writes the domain's seed data set if its table is empty; how many rows were written.
    ///
    /// The seed rows carry their ids and are inserted with `ON CONFLICT (id) DO NOTHING`, all in
    /// one transaction: two instances starting on one empty database at once both see it empty,
    /// and the second one's inserts then find the first one's rows and write nothing, so the seed
    /// never doubles. A table with rows (seeded, or written by clients with seeding off) is left
    /// alone.
    pub(crate) async fn seed(&self) -> Result<u64, Error> {
        let table = self.table();
        let probe = format!("SELECT id FROM {table} LIMIT 1");
        if self.db.fetch_optional(&probe, &[]).await?.is_some() {
            return Ok(0);
        }
        let now = now_rfc3339();
        let units;
        let transactions;
        let documents;
        let (insert, rows): (&str, Vec<Vec<Arg<'_>>>) = match self.domain {
            Domain::Units => {
                units = seed::units();
                let rows = (1..)
                    .zip(&units)
                    .map(|(id, u): (i64, &NewUnit)| {
                        vec![
                            id.into(),
                            (&u.name).into(),
                            (&u.address).into(),
                            i64::from(u.bedrooms).into(),
                            u.monthly_rent_cents.into(),
                            (&u.status).into(),
                            (&now).into(),
                        ]
                    })
                    .collect();
                (
                    "INSERT INTO units (id, name, address, bedrooms, monthly_rent_cents, status, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                    rows,
                )
            }
            Domain::Finances => {
                transactions = seed::transactions();
                let rows = (1..)
                    .zip(&transactions)
                    .map(|(id, t): (i64, &NewTransaction)| {
                        vec![
                            id.into(),
                            t.unit_id.into(),
                            (&t.month).into(),
                            (&t.kind).into(),
                            t.amount_cents.into(),
                            (&t.description).into(),
                            (&now).into(),
                        ]
                    })
                    .collect();
                (
                    "INSERT INTO transactions (id, unit_id, month, kind, amount_cents, description, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                    rows,
                )
            }
            Domain::Legal => {
                documents = seed::documents();
                let rows = (1..)
                    .zip(&documents)
                    .map(|(id, d): (i64, &seed::SeedDocument)| {
                        vec![
                            id.into(),
                            d.unit_id.into(),
                            d.kind.into(),
                            d.status.into(),
                            (&d.title).into(),
                            (&now).into(),
                        ]
                    })
                    .collect();
                (
                    "INSERT INTO documents (id, unit_id, kind, status, title, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    rows,
                )
            }
        };
        // `common::sql` has no transaction of its own (what a transaction needs differs per
        // engine), so the seed is written row by row inside a transaction of each engine's pool:
        // one commit for the whole set, and never half a seed after a crash.
        let written = match self.db.pool().await? {
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut written = 0;
                for args in &rows {
                    written += sql::query(insert, args)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                written
            }
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mut written = 0;
                for args in &rows {
                    written += sql::query(insert, args)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                // Ids given explicitly do not move the BIGSERIAL's sequence; without this the
                // first client insert would be given id 1 and collide with the seed.
                let setval = format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
                );
                sqlx::query(&setval).execute(&mut *tx).await?;
                tx.commit().await?;
                written
            }
        };
        Ok(written)
    }

    fn table(&self) -> &'static str {
        match self.domain {
            Domain::Units => "units",
            Domain::Finances => "transactions",
            Domain::Legal => "documents",
        }
    }

    /// The units, in id order; only those with `status` when given.
    pub(crate) async fn units(&self, status: Option<&str>) -> Result<Vec<Unit>, Error> {
        let sql = format!(
            "SELECT {UNIT_COLUMNS} FROM units WHERE ($1 IS NULL OR status = $1) ORDER BY id"
        );
        let rows = self.db.fetch_all(&sql, &[status.into()]).await?;
        rows.iter().map(unit).collect()
    }

    /// The unit with this id.
    pub(crate) async fn unit(&self, id: i64) -> Result<Option<Unit>, Error> {
        let sql = format!("SELECT {UNIT_COLUMNS} FROM units WHERE id = $1");
        let row = self.db.fetch_optional(&sql, &[id.into()]).await?;
        row.as_ref().map(unit).transpose()
    }

    /// Inserts a unit (already validated; `available` when it has no status) and returns it.
    pub(crate) async fn insert_unit(&self, u: &NewUnit) -> Result<Unit, Error> {
        let sql = format!(
            "INSERT INTO units (name, address, bedrooms, monthly_rent_cents, status, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {UNIT_COLUMNS}"
        );
        let status = u.status.as_deref().unwrap_or("available");
        let now = now_rfc3339();
        let row = self
            .db
            .fetch_one(
                &sql,
                &[
                    (&u.name).into(),
                    (&u.address).into(),
                    i64::from(u.bedrooms).into(),
                    u.monthly_rent_cents.into(),
                    status.into(),
                    (&now).into(),
                ],
            )
            .await?;
        unit(&row)
    }

    /// Applies the given fields of `c` (already validated) and sets `updated_at`; the unit after,
    /// `None` when there is no such id.
    pub(crate) async fn update_unit(&self, id: i64, c: &UnitChange) -> Result<Option<Unit>, Error> {
        // One statement, so that two concurrent changes of different fields both land.
        let sql = format!(
            "UPDATE units SET
                 name = COALESCE($1, name),
                 address = COALESCE($2, address),
                 bedrooms = COALESCE($3, bedrooms),
                 monthly_rent_cents = COALESCE($4, monthly_rent_cents),
                 status = COALESCE($5, status),
                 updated_at = $6
             WHERE id = $7 RETURNING {UNIT_COLUMNS}"
        );
        let now = now_rfc3339();
        let row = self
            .db
            .fetch_optional(
                &sql,
                &[
                    (&c.name).into(),
                    (&c.address).into(),
                    c.bedrooms.map(i64::from).into(),
                    c.monthly_rent_cents.into(),
                    (&c.status).into(),
                    (&now).into(),
                    id.into(),
                ],
            )
            .await?;
        row.as_ref().map(unit).transpose()
    }

    /// The transactions, in id order; only those of `unit` and of `month` when given.
    pub(crate) async fn transactions(
        &self,
        unit: Option<i64>,
        month: Option<&str>,
    ) -> Result<Vec<Transaction>, Error> {
        let sql = format!(
            "SELECT {TRANSACTION_COLUMNS} FROM transactions
             WHERE ($1 IS NULL OR unit_id = $1) AND ($2 IS NULL OR month = $2) ORDER BY id"
        );
        let rows = self
            .db
            .fetch_all(&sql, &[unit.into(), month.into()])
            .await?;
        rows.iter().map(transaction).collect()
    }

    /// Records a transaction (already validated) and returns it.
    pub(crate) async fn insert_transaction(
        &self,
        t: &NewTransaction,
    ) -> Result<Transaction, Error> {
        let sql = format!(
            "INSERT INTO transactions (unit_id, month, kind, amount_cents, description, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TRANSACTION_COLUMNS}"
        );
        let now = now_rfc3339();
        let row = self
            .db
            .fetch_one(
                &sql,
                &[
                    t.unit_id.into(),
                    (&t.month).into(),
                    (&t.kind).into(),
                    t.amount_cents.into(),
                    (&t.description).into(),
                    (&now).into(),
                ],
            )
            .await?;
        transaction(&row)
    }

    /// The documents, in id order; only those with `status` and of `unit` when given.
    pub(crate) async fn documents(
        &self,
        status: Option<&str>,
        unit: Option<i64>,
    ) -> Result<Vec<Document>, Error> {
        let sql = format!(
            "SELECT {DOCUMENT_COLUMNS} FROM documents
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR unit_id = $2) ORDER BY id"
        );
        let rows = self
            .db
            .fetch_all(&sql, &[status.into(), unit.into()])
            .await?;
        rows.iter().map(document).collect()
    }

    /// Runs `sql` on the database as is; for tests that need to set up a state no route makes.
    #[cfg(test)]
    pub(crate) async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, Error> {
        Ok(self.db.execute(sql, args).await?)
    }
}

fn unit(row: &Row) -> Result<Unit, Error> {
    let bedrooms: i64 = row.get("bedrooms")?;
    Ok(Unit {
        id: row.get("id")?,
        name: row.get("name")?,
        address: row.get("address")?,
        bedrooms: u32::try_from(bedrooms)
            .map_err(|_| Error::Corrupt(format!("a unit has {bedrooms} bedrooms")))?,
        monthly_rent_cents: row.get("monthly_rent_cents")?,
        status: row.get("status")?,
        updated_at: row.get("updated_at")?,
    })
}

fn transaction(row: &Row) -> Result<Transaction, Error> {
    Ok(Transaction {
        id: row.get("id")?,
        unit_id: row.get("unit_id")?,
        month: row.get("month")?,
        kind: row.get("kind")?,
        amount_cents: row.get("amount_cents")?,
        description: row.get("description")?,
        created_at: row.get("created_at")?,
    })
}

fn document(row: &Row) -> Result<Document, Error> {
    Ok(Document {
        id: row.get("id")?,
        unit_id: row.get("unit_id")?,
        kind: row.get("kind")?,
        status: row.get("status")?,
        title: row.get("title")?,
        updated_at: row.get("updated_at")?,
    })
}
