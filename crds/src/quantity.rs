//! Kubernetes resource quantities (`128Mi`, `1G`, `500k`) as byte counts.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity cannot be read as a number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {reason} (expected for example 512Mi, 1Gi or 100M)")]
pub struct QuantityError {
    input: String,
    reason: &'static str,
}

/// The value of a quantity such as `500m` (0.5), `2` or `1.5Gi`.
pub fn to_f64(quantity: &Quantity) -> Result<f64, QuantityError> {
    parse(quantity.0.as_str(), true)
}

/// The number of bytes a quantity such as `128Mi` or `1.5Gi` stands for,
/// rounded up to a whole byte.
pub fn to_bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    let input = quantity.0.as_str();
    let bytes = parse(input, false)?.ceil();
    if bytes >= u64::MAX as f64 {
        return Err(QuantityError {
            input: input.to_owned(),
            reason: "too large",
        });
    }
    Ok(bytes as u64)
}

fn parse(input: &str, allow_milli: bool) -> Result<f64, QuantityError> {
    let fail = |reason| QuantityError {
        input: input.to_owned(),
        reason,
    };
    let split = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(input.len());
    let (number, suffix) = input.split_at(split);
    if number.is_empty() {
        return Err(fail("expected a number"));
    }
    let number: f64 = number.parse().map_err(|_| fail("malformed number"))?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "m" if allow_milli => 1e-3,
        "m" => return Err(fail("milli-units are not a number of bytes")),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return Err(fail("unknown suffix")),
    };
    let value = number * multiplier;
    if !value.is_finite() {
        return Err(fail("too large"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Result<u64, QuantityError> {
        to_bytes(&Quantity(text.to_owned()))
    }

    #[test]
    fn reads_binary_and_decimal_suffixes() {
        assert_eq!(bytes("128Mi"), Ok(128 * 1024 * 1024));
        assert_eq!(bytes("1Gi"), Ok(1 << 30));
        assert_eq!(bytes("1.5Ki"), Ok(1536));
        assert_eq!(bytes("100M"), Ok(100_000_000));
        assert_eq!(bytes("42"), Ok(42));
    }

    #[test]
    fn reads_cpu_quantities() {
        let value = |text: &str| to_f64(&Quantity(text.to_owned())).unwrap();
        assert_eq!(value("500m"), 0.5);
        assert_eq!(value("2"), 2.0);
        assert_eq!(value("1Ki"), 1024.0);
    }

    #[test]
    fn rejects_what_is_not_bytes() {
        for text in ["", "Mi", "12Q", "1.2.3Gi", "500m"] {
            assert!(bytes(text).is_err(), "{text}");
        }
    }
}
