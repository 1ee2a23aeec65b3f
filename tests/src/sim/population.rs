//! Booths, customers, their transponders and vehicles: the ids in a line and who drives how often.
//!
//! The customer → transponder → vehicle class mapping is a fixed rule, independent of the seed,
//! so a test can name a customer's transponders or vehicle without running the generator:
//! every fourth customer has two transponders (two vehicles), the rest one; transponders are
//! numbered consecutively in customer order.

use std::ops::RangeInclusive;

use super::tariff::{class_for_draw, push_padded};

/// Share of trips made by the most frequent customers ("commuters"), in tenths.
const COMMUTER_TRIP_TENTHS: u32 = 6;

/// The commuters are this fraction (one in N) of the customers, the lowest-numbered ones.
const COMMUTER_ONE_IN: u32 = 5;

/// The id of booth `index` (zero-based): `0` → `PLZ-001`.
pub fn booth_id(index: usize) -> String {
    format!("PLZ-{:03}", index + 1)
}

/// The zero-based index of a booth id such as `PLZ-017` (→ 16).
pub(crate) fn parse_booth_id(id: &str) -> Option<usize> {
    let n: usize = parse_digits(id.strip_prefix("PLZ-")?)?;
    // Only the canonical spelling: `PLZ-3` would never match a generated line.
    n.checked_sub(1).filter(|i| booth_id(*i) == id)
}

/// The id of customer `n` (one-based): `1234` → `C0001234`.
pub fn customer_id(n: u32) -> String {
    format!("C{n:07}")
}

/// The number of a customer id such as `C0001234` (→ 1234).
pub(crate) fn parse_customer_id(id: &str) -> Option<u32> {
    let n = parse_digits(id.strip_prefix('C')?)?;
    (customer_id(n) == id).then_some(n)
}

/// The id of transponder `n` (one-based): `88231` → `TX-0088231`.
pub fn transponder_id(n: u32) -> String {
    format!("TX-{n:07}")
}

/// The transponder numbers of customer `n` (one-based): one, or two for every fourth customer.
pub fn transponders_of(customer: u32) -> RangeInclusive<u32> {
    let before = customer.saturating_sub(1);
    // Customers 1..customer each hold one transponder, plus one more per fourth customer.
    let first = before + before / 4 + 1;
    let count = if has_two_transponders(customer) { 2 } else { 1 };
    first..=first + count - 1
}

/// Every fourth customer has a second vehicle.
// `u32::is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.85.
#[allow(clippy::manual_is_multiple_of)]
fn has_two_transponders(customer: u32) -> bool {
    customer % 4 == 0
}

/// The vehicle class of the vehicle that carries transponder `n`; stable, and distributed
/// like the traffic mix in [`VEHICLE_CLASSES`](super::VEHICLE_CLASSES).
pub fn vehicle_class_of(transponder: u32) -> u8 {
    class_for_draw((splitmix64(u64::from(transponder)) % 1000) as u16)
}

/// Appends `C` and the seven-digit customer number.
pub(crate) fn push_customer_id(out: &mut Vec<u8>, n: u32) {
    out.push(b'C');
    push_padded(out, u64::from(n), 7);
}

/// Appends `TX-` and the seven-digit transponder number.
pub(crate) fn push_transponder_id(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(b"TX-");
    push_padded(out, u64::from(n), 7);
}

/// Who drives: a few frequent customers make most trips, the rest are occasional.
#[derive(Debug, Clone)]
pub(crate) struct Population {
    customers: u32,
    commuters: u32,
}

impl Population {
    /// Customers `1..=customers` (at least one).
    pub(crate) fn new(customers: u32) -> Self {
        let customers = customers.max(1);
        Population {
            customers,
            commuters: (customers / COMMUTER_ONE_IN).max(1),
        }
    }

    /// A customer for the next trip: 60 % of trips come from the lowest-numbered fifth.
    pub(crate) fn pick_customer(&self, rng: &mut fastrand::Rng) -> u32 {
        if rng.u32(0..10) < COMMUTER_TRIP_TENTHS {
            rng.u32(1..=self.commuters)
        } else {
            rng.u32(1..=self.customers)
        }
    }
}

/// One of the customer's transponders, uniformly.
pub(crate) fn pick_transponder(customer: u32, rng: &mut fastrand::Rng) -> u32 {
    rng.u32(transponders_of(customer))
}

/// Strictly decimal digits (no sign, no spaces) as a number.
fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A well-mixed hash, so that consecutive transponders get unrelated vehicle classes.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_format_and_parse_back() {
        assert_eq!(booth_id(16), "PLZ-017");
        assert_eq!(parse_booth_id("PLZ-017"), Some(16));
        assert_eq!(parse_booth_id("PLZ-000"), None);
        assert_eq!(parse_booth_id("PLZ-+17"), None);
        assert_eq!(customer_id(1234), "C0001234");
        assert_eq!(parse_customer_id("C0001234"), Some(1234));
        assert_eq!(parse_customer_id("X0001234"), None);
        assert_eq!(parse_customer_id("C1234"), None);
        assert_eq!(parse_booth_id("PLZ-3"), None);
        assert_eq!(transponder_id(88_231), "TX-0088231");
        let mut out = Vec::new();
        push_customer_id(&mut out, 1234);
        push_transponder_id(&mut out, 88_231);
        assert_eq!(out, b"C0001234TX-0088231");
    }

    #[test]
    fn transponders_are_consecutive_and_never_shared() {
        let mut next = 1;
        for customer in 1..=1000 {
            let range = transponders_of(customer);
            assert_eq!(*range.start(), next, "customer {customer}");
            assert_eq!(range.clone().count(), if customer % 4 == 0 { 2 } else { 1 });
            next = range.end() + 1;
        }
    }

    #[test]
    fn vehicle_classes_are_mostly_cars() {
        let mut counts = [0u32; 10];
        for tx in 1..=100_000 {
            counts[usize::from(vehicle_class_of(tx))] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!((75_000..81_000).contains(&counts[1]), "{counts:?}");
        assert!(counts[2..].iter().all(|c| *c > 0), "{counts:?}");
    }

    #[test]
    fn commuters_make_most_trips() {
        let pop = Population::new(1000);
        let mut rng = fastrand::Rng::with_seed(1);
        let frequent = (0..10_000)
            .filter(|_| pop.pick_customer(&mut rng) <= 200)
            .count();
        assert!((6_400..7_400).contains(&frequent), "{frequent}");
    }
}
