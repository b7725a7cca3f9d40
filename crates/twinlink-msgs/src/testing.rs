//! Random message values for property tests (feature `testing`).
//!
//! Values are drawn to exercise the codec: empty and non-ASCII strings, empty and non-empty
//! sequences, zero, tiny and huge magnitudes. Floats are always finite so values survive a
//! JSON round trip (used to hand them to other ROS 2 implementations); NaN and infinities are
//! covered by the codec's own tests.

use rand::Rng;

/// A type that can draw a random value of itself.
pub trait RandomValue: Sized {
    /// A random value.
    fn random<R: Rng + ?Sized>(rng: &mut R) -> Self;

    /// A random value respecting a string bound (only strings use it).
    fn random_bounded<R: Rng + ?Sized>(rng: &mut R, _bound: Option<usize>) -> Self {
        Self::random(rng)
    }
}

/// Draws one element, honouring a string bound where the element is a string.
pub fn random_element<T: RandomValue, R: Rng + ?Sized>(rng: &mut R, bound: Option<usize>) -> T {
    T::random_bounded(rng, bound)
}

/// Draws a sequence of 0 to 4 elements (never more than `bound`).
pub fn random_vec<T, R: Rng + ?Sized>(
    rng: &mut R,
    bound: Option<usize>,
    mut element: impl FnMut(&mut R) -> T,
) -> Vec<T> {
    let max = bound.unwrap_or(4).min(4);
    let len = rng.random_range(0..=max);
    (0..len).map(|_| element(rng)).collect()
}

macro_rules! random_int {
    ($($ty:ty),*) => {$(
        impl RandomValue for $ty {
            fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
                match rng.random_range(0..4) {
                    0 => 0,
                    1 => <$ty>::MAX,
                    2 => <$ty>::MIN,
                    _ => rng.random(),
                }
            }
        }
    )*};
}
random_int!(u8, i8, u16, i16, u32, i32, u64, i64);

impl RandomValue for bool {
    fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        rng.random()
    }
}

macro_rules! random_float {
    ($($ty:ty),*) => {$(
        impl RandomValue for $ty {
            fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
                match rng.random_range(0..6) {
                    0 => 0.0,
                    1 => <$ty>::MIN_POSITIVE,
                    2 => <$ty>::MAX,
                    _ => {
                        let magnitude: $ty = rng.random::<$ty>() * (10.0 as $ty).powi(rng.random_range(-6..7));
                        if rng.random() { magnitude } else { -magnitude }
                    }
                }
            }
        }
    )*};
}
random_float!(f32, f64);

const STRING_CHARS: &[char] = &[
    'a', 'b', 'z', 'A', 'Z', '0', '9', '_', '-', '/', ' ', '"', '\\', 'é', 'ß', '漢', '🚗',
];

impl RandomValue for String {
    fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self::random_bounded(rng, None)
    }

    fn random_bounded<R: Rng + ?Sized>(rng: &mut R, bound: Option<usize>) -> Self {
        let target = rng.random_range(0..=12usize);
        let mut s = String::new();
        for _ in 0..target {
            let c = STRING_CHARS[rng.random_range(0..STRING_CHARS.len())];
            if bound.is_some_and(|max| s.len() + c.len_utf8() > max) {
                break;
            }
            s.push(c);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin_msgs::msg::Recommendation;
    use rand::SeedableRng;

    #[test]
    fn same_seed_same_value_and_values_vary() {
        let a = Recommendation::random(&mut rand::rngs::StdRng::seed_from_u64(7));
        let b = Recommendation::random(&mut rand::rngs::StdRng::seed_from_u64(7));
        let c = Recommendation::random(&mut rand::rngs::StdRng::seed_from_u64(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
