//! Durations on the command line: a whole number and a unit, `90s`, `10m`, `2h`, `1d`
//! (a bare number is seconds).

use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, "s"), |i| t.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?}: expected e.g. 90s, 10m, 2h"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("duration {text:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse("5x").unwrap_err().contains("the unit is"));
        assert!(parse("m").unwrap_err().contains("expected e.g."));
        assert!(parse("99999999999999999999d").is_err());
    }
}
