//! The seed data set each domain's database starts with: 40 units, their money over the 12
//! months of 2026 and their legal documents.
//!
//! Everything is arithmetic on the unit's number (no clock, no random generator), so every
//! instance and every run writes the same rows with the same ids, and the three domains agree
//! with one another although they never talk: the finances seed charges rent to the units the
//! units seed marks `occupied`, and the legal seed gives them active leases.

use api::wire::rental::{NewTransaction, NewUnit};

/// How many units the seed has; the other domains' seeds refer to ids `1..=UNITS`.
pub(crate) const UNITS: i64 = 40;

/// The year the finances seed covers.
const YEAR: u32 = 2026;

/// Units under repair (everything else is `available` or `occupied`, see [`unit_status`]).
const MAINTENANCE: [i64; 3] = [7, 23, 31];

const STREETS: [&str; 8] = [
    "Calle Luna",
    "Camino del Sol",
    "Avenida Piñón",
    "Calle Alegre",
    "Camino Real",
    "Paseo de Peralta",
    "Calle Ojo Caliente",
    "Acequia Madre",
];

/// A legal document of the seed (its id is its position plus one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeedDocument {
    pub(crate) unit_id: i64,
    pub(crate) kind: &'static str,
    pub(crate) status: &'static str,
    pub(crate) title: String,
}

/// The status of unit `i`: 3 in `maintenance`, 15 `available` (those with `i % 8` in 1, 4, 6),
/// the other 22 `occupied`.
pub(crate) fn unit_status(i: i64) -> &'static str {
    if MAINTENANCE.contains(&i) {
        "maintenance"
    } else if matches!(i % 8, 1 | 4 | 6) {
        "available"
    } else {
        "occupied"
    }
}

fn bedrooms(i: i64) -> i64 {
    1 + (i * 7) % 4
}

fn rent_cents(i: i64) -> i64 {
    // 65 000 to 179 000 cents: a base per bedroom plus up to 24 000 of location.
    65_000 + (bedrooms(i) - 1) * 30_000 + (i * 1_337) % 25 * 1_000
}

/// The units, in id order (unit `i` has id `i`).
pub(crate) fn units() -> Vec<NewUnit> {
    (1..=UNITS)
        .map(|i| {
            let street = STREETS[(i % 8) as usize];
            NewUnit {
                name: format!("Casita {i}"),
                address: format!("{} {street}, Santa Fe, NM 8750{}", 100 + i * 12, i % 6),
                bedrooms: bedrooms(i) as u32,
                monthly_rent_cents: rent_cents(i),
                status: Some(unit_status(i).to_string()),
            }
        })
        .collect()
}

/// The transactions, in id order: month by month, and in each month unit by unit: rent for every
/// occupied unit, a deposit for an occupied unit in its move-in month (`1 + i % 12`), and an
/// expense (maintenance, utilities or tax, negative) for about two units in five.
pub(crate) fn transactions() -> Vec<NewTransaction> {
    let mut all = Vec::new();
    for m in 1..=12_i64 {
        let month = format!("{YEAR}-{m:02}");
        for i in 1..=UNITS {
            let mut push = |kind: &str, amount_cents: i64, description: String| {
                all.push(NewTransaction {
                    unit_id: i,
                    month: month.clone(),
                    kind: kind.to_string(),
                    amount_cents,
                    description,
                });
            };
            if unit_status(i) == "occupied" {
                if 1 + i % 12 == m {
                    push(
                        "deposit",
                        rent_cents(i),
                        format!("Security deposit, Casita {i}"),
                    );
                }
                push("rent", rent_cents(i), format!("Rent {month}, Casita {i}"));
            }
            if (i * 7 + m * 3) % 5 < 2 {
                let (kind, amount, what) = match (i + m) % 3 {
                    0 => ("maintenance", 5_000 + (i * m * 131) % 30 * 1_000, "Repairs"),
                    1 => ("utilities", 4_000 + (i + m) % 8 * 1_000, "Water and power"),
                    _ => ("tax", 12_000 + i % 5 * 2_000, "Property tax installment"),
                };
                push(kind, -amount, format!("{what}, Casita {i}"));
            }
        }
    }
    all
}

/// The documents, in id order: unit by unit, a lease each (active when occupied; expired or
/// pending for an available unit; expired under maintenance), an inspection for every fourth
/// unit, a permit for units 3, 11, 19, 27, 35 and insurance for units 5, 13, 21, 29, 37.
pub(crate) fn documents() -> Vec<SeedDocument> {
    let mut all = Vec::new();
    for i in 1..=UNITS {
        let mut push = |kind, status, title: String| {
            all.push(SeedDocument {
                unit_id: i,
                kind,
                status,
                title,
            });
        };
        let lease = match unit_status(i) {
            "occupied" => "active",
            "available" if i % 3 == 0 => "pending",
            _ => "expired",
        };
        push("lease", lease, format!("Lease agreement, Casita {i}"));
        if i % 4 == 0 {
            let status = if i % 8 == 0 { "active" } else { "expired" };
            push(
                "inspection",
                status,
                format!("Annual inspection, Casita {i}"),
            );
        }
        if i % 8 == 3 {
            let status = if i < 15 { "pending" } else { "active" };
            push("permit", status, format!("Renovation permit, Casita {i}"));
        }
        if i % 8 == 5 {
            let status = if i == 13 { "expired" } else { "active" };
            push(
                "insurance",
                status,
                format!("Property insurance, Casita {i}"),
            );
        }
    }
    all
}
