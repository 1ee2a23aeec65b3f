//! Vehicle classes, their share of traffic and their tariffs; money as integer cents.
//!
//! The classes follow the Brazilian federal highway categories (ANTT): 1 is a car, 9 a
//! motorcycle, the rest are by axle count. Tariffs are multiples of half the class-1 tariff, so
//! every amount is an exact number of cents; amounts are formatted from integers, never floats.

/// One vehicle class: its number, what it is, how common it is and what it pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VehicleClass {
    /// The `vehicle_class` column, `1..=9`.
    pub class: u8,
    /// Human description (Portuguese category names are on the booth's sign).
    pub description: &'static str,
    /// Share of vehicles, per mille; the shares add up to 1000.
    pub share_per_mille: u16,
    /// Tariff in halves of the class-1 tariff (car = 2 halves, motorcycle = 1).
    pub tariff_halves: i64,
}

const fn vc(
    class: u8,
    share_per_mille: u16,
    tariff_halves: i64,
    description: &'static str,
) -> VehicleClass {
    VehicleClass {
        class,
        description,
        share_per_mille,
        tariff_halves,
    }
}

/// The nine classes as (class, share per mille, tariff halves, description): mostly cars, a fair
/// number of trucks, some motorcycles.
pub const VEHICLE_CLASSES: [VehicleClass; 9] = [
    vc(1, 780, 2, "car or van, 2 axles"),
    vc(2, 50, 4, "truck or bus, 2 axles"),
    vc(3, 10, 3, "car with trailer, 3 axles"),
    vc(4, 40, 6, "truck or bus, 3 axles"),
    vc(5, 5, 4, "car with trailer, 4 axles"),
    vc(6, 25, 8, "truck, 4 axles"),
    vc(7, 30, 10, "truck, 5 axles"),
    vc(8, 20, 12, "truck, 6 axles"),
    vc(9, 40, 1, "motorcycle"),
];

/// The tariff of `class` in cents, given the class-1 tariff `base_cents`; `None` for a class
/// outside `1..=9`. Odd halves round half up to whole cents.
pub fn tariff_cents(base_cents: i64, class: u8) -> Option<i64> {
    let vc = VEHICLE_CLASSES.get(usize::from(class).checked_sub(1)?)?;
    Some((base_cents * vc.tariff_halves + 1).div_euclid(2))
}

/// The class whose cumulative share covers `draw` (`0..1000`, per mille).
pub(crate) fn class_for_draw(draw: u16) -> u8 {
    let mut acc = 0;
    for vc in &VEHICLE_CLASSES {
        acc += vc.share_per_mille;
        if draw < acc {
            return vc.class;
        }
    }
    // Only reachable for draw >= 1000; the most common class is the sensible fallback.
    1
}

/// Appends `cents` as a decimal amount with exactly two places, e.g. `1250` → `12.50`.
pub fn format_cents(cents: i64, out: &mut Vec<u8>) {
    if cents < 0 {
        out.push(b'-');
    }
    let abs = cents.unsigned_abs();
    push_uint(out, abs / 100);
    out.push(b'.');
    push_padded(out, abs % 100, 2);
}

/// Parses an amount with at most two decimal places (`12`, `12.5`, `12.50`) into cents;
/// `None` for anything else (signs, exponents, thousands separators, currency symbols).
pub(crate) fn parse_cents(s: &str) -> Option<i64> {
    let (units, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if units.is_empty() || !digits(units) || !digits(frac) || frac.len() > 2 {
        return None;
    }
    if s.contains('.') && frac.is_empty() {
        return None;
    }
    let units: i64 = units.parse().ok()?;
    let mut frac_cents: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    if frac.len() == 1 {
        frac_cents *= 10;
    }
    units.checked_mul(100)?.checked_add(frac_cents)
}

/// Appends `v` in decimal.
pub(crate) fn push_uint(out: &mut Vec<u8>, v: u64) {
    push_padded(out, v, 1);
}

/// Appends `v` in decimal, left-padded with zeros to at least `width` digits. Hand-rolled
/// because `write!` per field is the slowest part of generating a line in a debug build.
pub(crate) fn push_padded(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while v > 0 {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = i.min(digits.len().saturating_sub(width));
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_one_thousand_and_cars_dominate() {
        let total: u16 = VEHICLE_CLASSES.iter().map(|c| c.share_per_mille).sum();
        assert_eq!(total, 1000);
        assert_eq!(class_for_draw(0), 1);
        assert_eq!(class_for_draw(779), 1);
        assert_eq!(class_for_draw(780), 2);
        assert_eq!(class_for_draw(999), 9);
        for (i, vc) in VEHICLE_CLASSES.iter().enumerate() {
            assert_eq!(usize::from(vc.class), i + 1);
        }
    }

    #[test]
    fn tariffs_follow_axles_and_motorcycles_pay_half() {
        let t = |c| tariff_cents(1250, c).unwrap();
        assert_eq!(t(1), 1250);
        assert_eq!(t(9), 625);
        assert_eq!(t(3), 1875);
        assert_eq!(t(8), 7500);
        assert_eq!(tariff_cents(1250, 0), None);
        assert_eq!(tariff_cents(1250, 10), None);
        assert_eq!(tariff_cents(1251, 9), Some(626));
    }

    #[test]
    fn cents_format_with_two_places_and_parse_back() {
        for (cents, text) in [
            (1250, "12.50"),
            (625, "6.25"),
            (5, "0.05"),
            (0, "0.00"),
            (-130, "-1.30"),
        ] {
            let mut out = Vec::new();
            format_cents(cents, &mut out);
            assert_eq!(out, text.as_bytes());
            if cents >= 0 {
                assert_eq!(parse_cents(text), Some(cents));
            }
        }
        assert_eq!(parse_cents("12.5"), Some(1250));
        assert_eq!(parse_cents("12"), Some(1200));
        for bad in [
            "", ".5", "12.", "12.505", "R$12.50", "12,50", "1e3", "-1.00", "NaN", " 1.00",
        ] {
            assert_eq!(parse_cents(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn padding_keeps_wide_numbers_whole() {
        let mut out = Vec::new();
        push_padded(&mut out, 42, 7);
        out.push(b' ');
        push_padded(&mut out, 123_456_789, 7);
        out.push(b' ');
        push_uint(&mut out, 0);
        assert_eq!(out, b"0000042 123456789 0");
    }
}
