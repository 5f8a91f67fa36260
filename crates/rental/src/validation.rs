//! The rules a body or a query value must follow, each failing with its stable code. The seed data
//! set follows them too (a test checks it), so that seeded rows look like any a client wrote.

use api::wire::rental::{
    DOCUMENT_STATUSES, NewTransaction, NewUnit, TRANSACTION_KINDS, UNIT_STATUSES, UnitChange,
};

use crate::Error;

/// Longest unit name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Longest address, in characters.
const MAX_ADDRESS_CHARS: usize = 200;
/// Most bedrooms a unit may have.
const MAX_BEDROOMS: u32 = 20;
/// Longest transaction description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// A `POST /units` body.
pub(crate) fn new_unit(u: &NewUnit) -> Result<(), Error> {
    name(&u.name)?;
    address(&u.address)?;
    bedrooms(u.bedrooms)?;
    rent(u.monthly_rent_cents)?;
    if let Some(s) = &u.status {
        unit_status(s)?;
    }
    Ok(())
}

/// A `PATCH /units/{id}` body: at least one field, each given field valid.
pub(crate) fn unit_change(c: &UnitChange) -> Result<(), Error> {
    let UnitChange {
        name: n,
        address: a,
        bedrooms: b,
        monthly_rent_cents: r,
        status: s,
    } = c;
    if n.is_none() && a.is_none() && b.is_none() && r.is_none() && s.is_none() {
        return Err(Error::EmptyChange);
    }
    n.as_deref().map(name).transpose()?;
    a.as_deref().map(address).transpose()?;
    b.map(bedrooms).transpose()?;
    r.map(rent).transpose()?;
    s.as_deref().map(unit_status).transpose()?;
    Ok(())
}

/// A `POST /transactions` body.
pub(crate) fn new_transaction(t: &NewTransaction) -> Result<(), Error> {
    unit_id(t.unit_id)?;
    month(&t.month)?;
    if !TRANSACTION_KINDS.contains(&t.kind.as_str()) {
        return Err(Error::invalid(
            "invalid_kind",
            format!(
                "kind must be one of {}; got {:?}",
                TRANSACTION_KINDS.join(", "),
                t.kind
            ),
        ));
    }
    let income = is_income(&t.kind);
    if t.amount_cents == 0 || (t.amount_cents > 0) != income {
        let expected = if income { "positive" } else { "negative" };
        return Err(Error::invalid(
            "invalid_amount",
            format!(
                "amount_cents of a {} transaction must be {expected} (income is positive, expenses negative); got {}",
                t.kind, t.amount_cents
            ),
        ));
    }
    if t.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid(
            "invalid_description",
            format!("description must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Whether a transaction of `kind` is income (a positive amount) rather than an expense.
pub(crate) fn is_income(kind: &str) -> bool {
    matches!(kind, "rent" | "deposit")
}

/// A unit status, in a body or in `?status=` of `/units`.
pub(crate) fn unit_status(s: &str) -> Result<(), Error> {
    one_of("status", s, &UNIT_STATUSES)
}

/// A document status, in `?status=` of `/documents`.
pub(crate) fn document_status(s: &str) -> Result<(), Error> {
    one_of("status", s, &DOCUMENT_STATUSES)
}

/// A unit id, in a body or in `?unit=`: positive.
pub(crate) fn unit_id(id: i64) -> Result<(), Error> {
    if id > 0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_unit",
            format!("a unit id is a positive integer; got {id}"),
        ))
    }
}

/// A month, in a body or in `?month=`: `YYYY-MM` with a month from 01 to 12.
pub(crate) fn month(m: &str) -> Result<(), Error> {
    if api::wire::rental::is_month(m) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_month",
            format!("month must be YYYY-MM with a month from 01 to 12; got {m:?}"),
        ))
    }
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), Error> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_status",
            format!(
                "{field} must be one of {}; got {value:?}",
                allowed.join(", ")
            ),
        ))
    }
}

fn name(n: &str) -> Result<(), Error> {
    text("name", "invalid_name", n, MAX_NAME_CHARS)
}

fn address(a: &str) -> Result<(), Error> {
    text("address", "invalid_address", a, MAX_ADDRESS_CHARS)
}

/// 1 to `max` characters, not all blank.
fn text(field: &str, code: &'static str, value: &str, max: usize) -> Result<(), Error> {
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > max {
        Err(Error::invalid(
            code,
            format!("{field} must be 1 to {max} characters and not blank; this one has {chars}"),
        ))
    } else {
        Ok(())
    }
}

fn bedrooms(b: u32) -> Result<(), Error> {
    if b <= MAX_BEDROOMS {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_bedrooms",
            format!("bedrooms must be 0 to {MAX_BEDROOMS}; got {b}"),
        ))
    }
}

fn rent(r: i64) -> Result<(), Error> {
    if r >= 0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_rent",
            format!("monthly_rent_cents must be 0 or more; got {r}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        for ok in ["2026-01", "2026-12", "1999-09", "0000-10"] {
            assert!(month(ok).is_ok(), "{ok}");
        }
        for bad in [
            "2026-00",
            "2026-13",
            "2026-1",
            "26-01",
            "2026/01",
            "2026-01-01",
            "",
            "2026-+1",
            "２026-01",
            "abcd-ef",
        ] {
            assert!(
                matches!(
                    month(bad),
                    Err(Error::Invalid {
                        code: "invalid_month",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(name(&"é".repeat(100)).is_ok());
        assert!(name(&"é".repeat(101)).is_err());
        assert!(name("   ").is_err());
        assert!(address(&"a".repeat(200)).is_ok());
        assert!(address(&"a".repeat(201)).is_err());
    }
}
