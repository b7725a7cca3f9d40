//! Checked conversions between floats in SI units and the standard's integer fields.

use crate::CitsError;

/// `v` if it is finite.
pub(crate) fn finite(field: &str, v: f64) -> Result<f64, CitsError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(CitsError::NotFinite {
            field: field.to_string(),
            value: v,
        })
    }
}

/// `round(v / unit)`, which must lie in `min..=max`.
pub(crate) fn quantize(
    field: &str,
    v: f64,
    unit: f64,
    min: i64,
    max: i64,
    allowed: &str,
) -> Result<i64, CitsError> {
    let q = (finite(field, v)? / unit).round();
    // Compare as floats first: a huge value must not saturate into range when cast.
    if q < min as f64 || q > max as f64 {
        return Err(CitsError::out_of_range(field, v, allowed));
    }
    Ok(q as i64)
}

/// A probability or confidence in `[0, 1]`.
pub(crate) fn unit_interval(field: &str, v: f32) -> Result<f64, CitsError> {
    let v = finite(field, f64::from(v))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(CitsError::out_of_range(field, v, "[0, 1]"))
    }
}

/// Angle in radians -> `[0, 3600)` tenths of a degree, counted the same way.
pub(crate) fn angle_to_decidegrees(field: &str, rad: f64) -> Result<u16, CitsError> {
    let deg = finite(field, rad)?.to_degrees().rem_euclid(360.0);
    // rem_euclid can round to exactly 360.0 for tiny negative inputs; the modulo folds it.
    Ok(((deg * 10.0).round() as u32 % 3600) as u16)
}

/// Tenths of a degree -> radians in `(-pi, pi]`.
pub(crate) fn decidegrees_to_angle(tenths: u16) -> f64 {
    normalize_angle(f64::from(tenths).to_radians() / 10.0)
}

/// An angle folded into `(-pi, pi]`.
pub(crate) fn normalize_angle(rad: f64) -> f64 {
    let a = rad.rem_euclid(std::f64::consts::TAU);
    if a > std::f64::consts::PI {
        a - std::f64::consts::TAU
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_and_checks_range() {
        assert_eq!(quantize("f", 1.234, 0.01, -10, 1000, "").unwrap(), 123);
        assert_eq!(quantize("f", -0.005_1, 0.01, -10, 10, "").unwrap(), -1);
        let e = quantize("a.b", 1e300, 0.01, -10, 10, "[-0.1, 0.1] m").unwrap_err();
        assert!(e.to_string().contains("a.b"), "{e}");
        assert!(matches!(
            quantize("f", f64::NAN, 1.0, 0, 1, ""),
            Err(CitsError::NotFinite { .. })
        ));
    }

    #[test]
    fn angles_fold_into_range() {
        assert_eq!(angle_to_decidegrees("y", 0.0).unwrap(), 0);
        assert_eq!(angle_to_decidegrees("y", -1e-12).unwrap(), 0);
        assert_eq!(
            angle_to_decidegrees("y", std::f64::consts::FRAC_PI_2).unwrap(),
            900
        );
        assert_eq!(
            angle_to_decidegrees("y", -std::f64::consts::FRAC_PI_2).unwrap(),
            2700
        );
        assert!((decidegrees_to_angle(2700) + std::f64::consts::FRAC_PI_2).abs() < 1e-12);
        assert!((decidegrees_to_angle(1800) - std::f64::consts::PI).abs() < 1e-12);
    }
}
