//! Amounts as people write them (DESIGN §11): `0.1eth`, `25gwei`, `100wei`, or a plain whole
//! number of base units. A unit is a symbol with a number of decimals, so token units (a
//! symbol and the token contract's decimals) parse the same way as ether's.
//!
//! Exact by construction: a decimal is scaled by its unit in integer arithmetic, and one
//! with more fractional digits than its unit has is refused rather than rounded.

use crate::ids::Amount;

/// A unit an amount may be written in: `symbol` (matched case-insensitively) worth
/// 10^`decimals` base units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub symbol: String,
    pub decimals: u8,
}

impl Unit {
    pub fn new(symbol: &str, decimals: u8) -> Self {
        Unit { symbol: symbol.to_string(), decimals }
    }
}

/// Ether's units, largest first: what every amount of a native-ether channel accepts.
pub fn ether_units() -> Vec<Unit> {
    vec![Unit::new("eth", 18), Unit::new("ether", 18), Unit::new("gwei", 9), Unit::new("wei", 0)]
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("missing")]
    Empty,
    #[error("must be positive, got {0}")]
    Negative(String),
    #[error(
        "{0:?} is ambiguous: a decimal needs a unit (e.g. {0}eth); a plain number counts base units and must be whole. {ACCEPTED}"
    )]
    DecimalWithoutUnit(String),
    #[error("unknown unit {unit:?} in {given:?}; known: {known}. {ACCEPTED}")]
    UnknownUnit { given: String, unit: String, known: String },
    #[error("{given:?} has more decimals than {unit} has ({decimals}). {ACCEPTED}")]
    TooPrecise { given: String, unit: String, decimals: u8 },
    #[error("larger than 2^128 - 1 base units: {0}")]
    TooLarge(String),
    #[error("not an amount: {0:?}. {ACCEPTED}")]
    Malformed(String),
}

/// What [`UnitError`] messages show as the accepted forms.
const ACCEPTED: &str =
    "Accepted: a whole number of base units (1000), or a decimal with a unit (0.1eth, 25gwei, 12.5 usdc)";

/// Parses `s` with `units` (their symbols, case-insensitively). Zero is allowed here; callers
/// that need a positive amount check it.
pub fn parse_amount(s: &str, units: &[Unit]) -> Result<Amount, UnitError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    if s.starts_with('-') {
        return Err(UnitError::Negative(s.to_string()));
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if number.is_empty() {
        return Err(UnitError::Malformed(s.to_string()));
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    if fraction.is_some_and(|f| f.contains('.')) || (whole.is_empty() && fraction.is_some_and(str::is_empty))
    {
        return Err(UnitError::Malformed(s.to_string()));
    }
    let decimals = if unit.is_empty() {
        if fraction.is_some() {
            return Err(UnitError::DecimalWithoutUnit(s.to_string()));
        }
        0
    } else {
        let found = units.iter().find(|u| u.symbol.eq_ignore_ascii_case(unit));
        let Some(found) = found else {
            if !unit.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(UnitError::Malformed(s.to_string()));
            }
            let known = units.iter().map(|u| u.symbol.as_str()).collect::<Vec<_>>().join(", ");
            return Err(UnitError::UnknownUnit { given: s.to_string(), unit: unit.to_string(), known });
        };
        found.decimals
    };
    let fraction = fraction.unwrap_or("").trim_end_matches('0');
    if fraction.len() > usize::from(decimals) {
        let unit = if unit.is_empty() { "base units".to_string() } else { unit.to_string() };
        return Err(UnitError::TooPrecise { given: s.to_string(), unit, decimals });
    }
    let too_large = || UnitError::TooLarge(s.to_string());
    let mut digits = String::with_capacity(whole.len() + usize::from(decimals));
    digits.push_str(whole);
    digits.push_str(fraction);
    digits.extend(std::iter::repeat_n('0', usize::from(decimals) - fraction.len()));
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(Amount::ZERO);
    }
    digits.parse::<u128>().map(Amount).map_err(|_| too_large())
}

/// `amount` in `unit` with every significant decimal and none more (`0.1`, `25`, `1.000001`).
/// In decimal digits, so any `decimals` a token contract claims (up to 255, beyond what a
/// u128 power of ten holds) formats instead of overflowing.
pub fn format_in(amount: Amount, unit: &Unit) -> String {
    let decimals = usize::from(unit.decimals);
    let digits = format!("{:0width$}", amount.0, width = decimals + 1);
    let (whole, fraction) = digits.split_at(digits.len() - decimals);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() { whole.to_string() } else { format!("{whole}.{fraction}") }
}

/// An ether amount the way a person reads it: in ETH from a thousandth of an ether up, in
/// gwei from 1,000 wei up, else in wei.
pub fn format_ether(amount: Amount) -> String {
    let (unit, symbol) = if amount.0 >= 10u128.pow(15) {
        (Unit::new("eth", 18), "ETH")
    } else if amount.0 >= 1_000 {
        (Unit::new("gwei", 9), "gwei")
    } else {
        (Unit::new("wei", 0), "wei")
    };
    format!("{} {symbol}", format_in(amount, &unit))
}

/// Both forms, for output people read: `0.1 ETH (100000000000000000 wei)`; plain wei alone.
pub fn format_ether_with_base(amount: Amount) -> String {
    let human = format_ether(amount);
    if human.ends_with(" wei") { human } else { format!("{human} ({} wei)", amount.0) }
}

/// A token amount for people, in its unit and its base units: `12.5 USDC (12500000 base
/// units)`; a token without decimals shows its base units alone.
pub fn format_token_with_base(amount: Amount, unit: &Unit) -> String {
    let human = format!("{} {}", format_in(amount, unit), unit.symbol.to_uppercase());
    if unit.decimals == 0 { human } else { format!("{human} ({} base units)", amount.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_amounts_show_their_unit_and_base_units() {
        let usdc = Unit::new("usdc", 6);
        assert_eq!(format_token_with_base(Amount(12_500_000), &usdc), "12.5 USDC (12500000 base units)");
        assert_eq!(format_token_with_base(Amount(7), &Unit::new("pts", 0)), "7 PTS");
        // A hostile token may claim any decimals (a peer can open a channel of it): they format.
        let odd = Unit::new("odd", 255);
        let shown = format_in(Amount(u128::MAX), &odd);
        assert!(
            shown.starts_with("0.") && shown.ends_with("340282366920938463463374607431768211455"),
            "{shown}"
        );
        assert_eq!(format_in(Amount(0), &odd), "0");
        assert_eq!(format_in(Amount(1_500_000), &Unit::new("usdc", 6)), "1.5");
        assert_eq!(format_in(Amount(42), &Unit::new("x", 39)), format!("0.{}42", "0".repeat(37)));
    }

    fn eth(s: &str) -> Result<u128, UnitError> {
        parse_amount(s, &ether_units()).map(|a| a.0)
    }

    const E18: u128 = 1_000_000_000_000_000_000;

    #[test]
    fn every_accepted_form() {
        assert_eq!(eth("1000"), Ok(1000), "a plain number is base units");
        assert_eq!(eth(" 1000 "), Ok(1000));
        assert_eq!(eth("0.1eth"), Ok(E18 / 10));
        assert_eq!(eth("0.1 ETH"), Ok(E18 / 10), "case and a space do not matter");
        assert_eq!(eth("1ether"), Ok(E18));
        assert_eq!(eth("25gwei"), Ok(25_000_000_000));
        assert_eq!(eth("1.5Gwei"), Ok(1_500_000_000));
        assert_eq!(eth("100wei"), Ok(100));
        assert_eq!(eth("2.wei"), Ok(2), "a trailing point adds nothing");
        assert_eq!(eth(".5eth"), Ok(E18 / 2));
        assert_eq!(eth("1.000000000000000001eth"), Ok(E18 + 1), "down to one wei");
        assert_eq!(eth("1.10000000000000000000eth"), Ok(E18 + E18 / 10), "trailing zeros beyond 18");
        assert_eq!(eth("0eth"), Ok(0));
        assert_eq!(eth(&u128::MAX.to_string()), Ok(u128::MAX));
        let usdc = [Unit::new("usdc", 6)];
        assert_eq!(parse_amount("12.5usdc", &usdc), Ok(Amount(12_500_000)), "a token's decimals");
    }

    #[test]
    fn every_refused_form_says_why() {
        assert_eq!(eth(""), Err(UnitError::Empty));
        assert_eq!(eth("-5"), Err(UnitError::Negative("-5".into())));
        assert!(matches!(eth("0.1"), Err(UnitError::DecimalWithoutUnit(_))), "ambiguous");
        assert!(matches!(eth("1.5wei"), Err(UnitError::TooPrecise { .. })));
        assert!(matches!(eth("0.0000000001gwei"), Err(UnitError::TooPrecise { .. })));
        assert!(matches!(eth("1.0000000000000000001eth"), Err(UnitError::TooPrecise { .. })));
        assert!(matches!(eth("5usdc"), Err(UnitError::UnknownUnit { .. })), "not configured here");
        assert!(matches!(eth("400000000000000000000eth"), Err(UnitError::TooLarge(_))));
        assert!(matches!(eth(&format!("{}0", u128::MAX)), Err(UnitError::TooLarge(_))));
        for bad in ["eth", "1.2.3eth", "1e18", "1,000", "0x10", ".eth", "1 e t h", "1eth!", "½eth"] {
            assert!(eth(bad).is_err(), "{bad:?} must be refused");
        }
        let message = eth("0.1").unwrap_err().to_string();
        assert!(message.contains("0.1eth") && message.contains("Accepted"), "{message}");
        let message = eth("5usdc").unwrap_err().to_string();
        assert!(message.contains("eth, ether, gwei, wei"), "{message}");
    }

    #[test]
    fn output_is_exact_and_reads_back() {
        assert_eq!(format_ether(Amount(E18 / 10)), "0.1 ETH");
        assert_eq!(format_ether(Amount(25_000_000_000)), "25 gwei");
        assert_eq!(format_ether(Amount(999)), "999 wei");
        assert_eq!(format_ether_with_base(Amount(E18)), "1 ETH (1000000000000000000 wei)");
        assert_eq!(format_ether_with_base(Amount(7)), "7 wei");
        for v in [0, 1, 999, 1_000, 1_234_567, E18 / 1000, E18 + 1, u128::MAX] {
            let shown = format_ether(Amount(v));
            assert_eq!(eth(&shown), Ok(v), "{shown} reads back as {v}");
        }
    }
}
