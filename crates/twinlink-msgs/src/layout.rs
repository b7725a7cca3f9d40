//! The CDR layout of a message: where each value starts and which bytes are alignment padding.
//!
//! This is a second, independent statement of the XCDR1 layout rules (the codec itself relies
//! on `cdr-encoding`). It gives exact encoded sizes without encoding, and the padding ranges
//! that a byte-for-byte comparison with another implementation must skip: ROS 2's Fast CDR
//! leaves padding bytes uninitialized, so only the non-padding bytes are comparable.

use std::ops::Range;

/// Running position and padding found while walking a value's CDR layout.
///
/// Positions count from the first byte after the 4-byte encapsulation header, which is
/// where CDR alignment is measured from.
#[derive(Debug, Default, Clone)]
pub struct CdrLayout {
    position: usize,
    padding: Vec<Range<usize>>,
}

impl CdrLayout {
    /// Skips to the next multiple of `alignment`, recording the skipped bytes as padding.
    pub fn align(&mut self, alignment: usize) {
        let skip = (alignment - self.position % alignment) % alignment;
        if skip > 0 {
            self.padding.push(self.position..self.position + skip);
            self.position += skip;
        }
    }

    /// Advances over `count` bytes of data.
    pub fn advance(&mut self, count: usize) {
        self.position += count;
    }

    /// Bytes of CDR data walked so far (without the encapsulation header).
    pub fn len(&self) -> usize {
        self.position
    }

    /// True if nothing has been walked.
    pub fn is_empty(&self) -> bool {
        self.position == 0
    }

    /// Padding ranges, relative to the start of the CDR data.
    pub fn padding(&self) -> &[Range<usize>] {
        &self.padding
    }
}

/// Anything with a CDR layout: primitives, strings, sequences, arrays and messages.
pub trait CdrElement {
    /// Walks this value's layout from the layout's current position.
    fn walk(&self, layout: &mut CdrLayout);
}

macro_rules! primitive_layout {
    ($($ty:ty),*) => {$(
        impl CdrElement for $ty {
            fn walk(&self, layout: &mut CdrLayout) {
                let size = std::mem::size_of::<$ty>();
                layout.align(size);
                layout.advance(size);
            }
        }
    )*};
}
primitive_layout!(bool, u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

impl CdrElement for String {
    fn walk(&self, layout: &mut CdrLayout) {
        layout.align(4);
        // u32 length (counting the terminator), the bytes, a NUL.
        layout.advance(4 + self.len() + 1);
    }
}

impl<T: CdrElement> CdrElement for Vec<T> {
    fn walk(&self, layout: &mut CdrLayout) {
        layout.align(4);
        layout.advance(4);
        for element in self {
            element.walk(layout);
        }
    }
}

impl<T: CdrElement, const N: usize> CdrElement for [T; N] {
    fn walk(&self, layout: &mut CdrLayout) {
        for element in self {
            element.walk(layout);
        }
    }
}

/// The layout of a whole message's CDR data (after the encapsulation header).
pub fn layout_of<T: CdrElement>(value: &T) -> CdrLayout {
    let mut layout = CdrLayout::default();
    value.walk(&mut layout);
    layout
}

/// Exact size in bytes of `value`'s encoding, encapsulation header included.
pub fn encoded_len<T: CdrElement>(value: &T) -> usize {
    crate::codec::HEADER_LEN + layout_of(value).len()
}

/// The first byte position at which two encodings of the same value differ, ignoring
/// alignment padding (which CDR leaves unspecified); `None` if they agree. Both buffers
/// include the encapsulation header, whose representation identifier (first two bytes)
/// must match and whose options (last two) are ignored. A writer may pad the end of the
/// data to a 4-byte boundary (Fast CDR does for some types); such trailing bytes are
/// padding too. Any other difference in length is a difference at the end of the value.
pub fn first_difference_ignoring_padding<T: CdrElement>(
    value: &T,
    left: &[u8],
    right: &[u8],
) -> Option<usize> {
    let header = crate::codec::HEADER_LEN;
    if left.len() < header || right.len() < header || left[..2] != right[..2] {
        return Some(0);
    }
    let layout = layout_of(value);
    let data_end = header + layout.len();
    let aligned_end = header + layout.len().div_ceil(4) * 4;
    let allowed = data_end..=aligned_end;
    if !allowed.contains(&left.len()) || !allowed.contains(&right.len()) {
        return Some(data_end.min(left.len()).min(right.len()));
    }
    let mut padding = layout.padding().iter().peekable();
    for pos in 0..layout.len() {
        while padding.peek().is_some_and(|r| r.end <= pos) {
            padding.next();
        }
        if padding.peek().is_some_and(|r| r.contains(&pos)) {
            continue;
        }
        if left[header + pos] != right[header + pos] {
            return Some(header + pos);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_padding_before_aligned_values() {
        // u8 at 0, 3 bytes padding, u32 at 4, f64 at 8, u8 at 16, 3 padding, String at 20.
        let mut layout = CdrLayout::default();
        1u8.walk(&mut layout);
        2u32.walk(&mut layout);
        3f64.walk(&mut layout);
        true.walk(&mut layout);
        String::from("ab").walk(&mut layout);
        assert_eq!(layout.padding(), &[1..4, 17..20]);
        assert_eq!(layout.len(), 20 + 4 + 3);
    }

    #[test]
    fn differences_outside_padding_are_found() {
        let value = (1u8, 2u32);
        // 1 data byte, 3 padding, 4 data bytes.
        let a = [0, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        let mut b = a;
        b[5] = 0xee; // padding: ignored
        assert_eq!(first_difference_ignoring_padding(&value, &a, &b), None);
        b[8] = 3; // data: found
        assert_eq!(first_difference_ignoring_padding(&value, &a, &b), Some(8));
        assert_eq!(
            first_difference_ignoring_padding(&value, &a, &a[..11]),
            Some(11)
        );
        let mut c = a;
        c[1] = 0; // other byte order
        assert_eq!(first_difference_ignoring_padding(&value, &a, &c), Some(0));
        // Trailing alignment to 4 is allowed, more is not.
        let one = [0, 1, 0, 0, 9];
        assert_eq!(
            first_difference_ignoring_padding(&9u8, &one, &[0, 1, 0, 0, 9, 7, 7, 7]),
            None
        );
        assert!(
            first_difference_ignoring_padding(&9u8, &one, &[0, 1, 0, 0, 9, 7, 7, 7, 7]).is_some()
        );
    }

    impl CdrElement for (u8, u32) {
        fn walk(&self, layout: &mut CdrLayout) {
            self.0.walk(layout);
            self.1.walk(layout);
        }
    }

    #[test]
    fn sequences_align_their_length_and_elements() {
        let mut layout = CdrLayout::default();
        1u8.walk(&mut layout);
        vec![1.0f64, 2.0].walk(&mut layout);
        // Length at 4..8; 8 is aligned, so the elements sit at 8 and 16.
        assert_eq!(layout.padding(), std::slice::from_ref(&(1..4)));
        assert_eq!(layout.len(), 24);
        let mut layout = CdrLayout::default();
        vec![1.0f64].walk(&mut layout);
        assert_eq!(layout.padding(), std::slice::from_ref(&(4..8)));
    }
}
