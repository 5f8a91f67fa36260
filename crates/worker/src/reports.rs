//! The Casitas preset's report tasks: `finance_report` reads the finances service's transactions
//! and totals them per unit and month; `legal_report` reads the legal service's documents and
//! counts them by status and kind. Both read the rows when the task runs (not when it was
//! queued), so a report reflects the data at its start.

use std::collections::BTreeMap;

use api::client::RentalClient;
use api::wire::rental::{
    DocumentsQuery, FinanceReport, LegalReport, Transaction, TransactionsQuery, UnitMonth,
};
use serde_json::Value;

use crate::handlers::{Context, Handler};

/// `finance_report` `{"unit"?, "month"?}`.
#[derive(Debug, Default)]
pub(crate) struct FinanceReportTask {
    /// The finances service (`[worker] finances_url`); `None`: every run fails, saying so.
    pub(crate) finances: Option<RentalClient>,
}

/// `legal_report` `{"status"?, "unit"?}`.
#[derive(Debug, Default)]
pub(crate) struct LegalReportTask {
    /// The legal service (`[worker] legal_url`); `None`: every run fails, saying so.
    pub(crate) legal: Option<RentalClient>,
}

fn filter<T: serde::de::DeserializeOwned + Default>(payload: Value) -> Result<T, String> {
    if payload.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(payload).map_err(|e| format!("unreadable report filter: {e}"))
}

/// Totals of `rows` per unit and month (in unit, then month order) and overall.
pub(crate) fn finance_totals(filter: TransactionsQuery, rows: &[Transaction]) -> FinanceReport {
    let mut by: BTreeMap<(i64, &str), UnitMonth> = BTreeMap::new();
    let mut report = FinanceReport {
        filter,
        ..FinanceReport::default()
    };
    for t in rows {
        let cell = by
            .entry((t.unit_id, t.month.as_str()))
            .or_insert_with(|| UnitMonth {
                unit_id: t.unit_id,
                month: t.month.clone(),
                ..UnitMonth::default()
            });
        cell.transactions += 1;
        report.transactions += 1;
        if t.amount_cents >= 0 {
            cell.income_cents += t.amount_cents;
            report.income_cents += t.amount_cents;
        } else {
            cell.expense_cents += t.amount_cents;
            report.expense_cents += t.amount_cents;
        }
        cell.net_cents += t.amount_cents;
        report.net_cents += t.amount_cents;
    }
    report.by_unit_month = by.into_values().collect();
    report
}

#[async_trait::async_trait]
impl Handler for FinanceReportTask {
    fn name(&self) -> &'static str {
        queue::types::FINANCE_REPORT
    }

    async fn run(&self, payload: Value, ctx: &Context) -> Result<Value, String> {
        let client = self
            .finances
            .as_ref()
            .ok_or("this worker has no finances_url: finance_report cannot read transactions")?;
        let q: TransactionsQuery = filter(payload)?;
        ctx.progress(serde_json::json!({"step": "reading transactions"}));
        let rid = format!("task-{}", ctx.task_id);
        let rows = client
            .transactions(&q, &rid)
            .await
            .map_err(|e| format!("reading the transactions: {e}"))?;
        let report = finance_totals(q, &rows.transactions);
        serde_json::to_value(report).map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Handler for LegalReportTask {
    fn name(&self) -> &'static str {
        queue::types::LEGAL_REPORT
    }

    async fn run(&self, payload: Value, ctx: &Context) -> Result<Value, String> {
        let client = self
            .legal
            .as_ref()
            .ok_or("this worker has no legal_url: legal_report cannot read documents")?;
        let q: DocumentsQuery = filter(payload)?;
        ctx.progress(serde_json::json!({"step": "reading documents"}));
        let rid = format!("task-{}", ctx.task_id);
        let docs = client
            .documents(&q, &rid)
            .await
            .map_err(|e| format!("reading the documents: {e}"))?
            .documents;
        let mut report = LegalReport {
            documents: docs.len() as u64,
            ..LegalReport::default()
        };
        for d in &docs {
            *report.by_status.entry(d.status.clone()).or_default() += 1;
            *report.by_kind.entry(d.kind.clone()).or_default() += 1;
            if d.status == "expired" && !report.units_with_expired.contains(&d.unit_id) {
                report.units_with_expired.push(d.unit_id);
            }
        }
        report.units_with_expired.sort_unstable();
        serde_json::to_value(report).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(unit_id: i64, month: &str, amount_cents: i64) -> Transaction {
        Transaction {
            id: 0,
            unit_id,
            month: month.into(),
            kind: if amount_cents > 0 { "rent" } else { "tax" }.into(),
            amount_cents,
            description: String::new(),
            created_at: String::new(),
        }
    }

    #[test]
    fn totals_per_unit_and_month_and_overall() {
        let rows = [
            t(2, "2026-02", 100_000),
            t(1, "2026-03", 90_000),
            t(2, "2026-02", -5_000),
            t(1, "2026-01", 90_000),
            t(1, "2026-01", -1_500),
        ];
        let r = finance_totals(TransactionsQuery::default(), &rows);
        assert_eq!(r.transactions, 5);
        assert_eq!(
            (r.income_cents, r.expense_cents, r.net_cents),
            (280_000, -6_500, 273_500)
        );
        let cells: Vec<(i64, &str, u64, i64, i64, i64)> = r
            .by_unit_month
            .iter()
            .map(|c| {
                (
                    c.unit_id,
                    c.month.as_str(),
                    c.transactions,
                    c.income_cents,
                    c.expense_cents,
                    c.net_cents,
                )
            })
            .collect();
        assert_eq!(
            cells,
            [
                (1, "2026-01", 2, 90_000, -1_500, 88_500),
                (1, "2026-03", 1, 90_000, 0, 90_000),
                (2, "2026-02", 2, 100_000, -5_000, 95_000),
            ]
        );
    }
}
