//! Names for shared data: region tiles over the map frame, and data categories.
//!
//! Twins find each other's data by name, not by identity: a twin that needs hazards on its
//! vehicle's route ahead asks for `hazards/<tile>` for each tile the route passes through, and
//! whichever twins have something to disclose there answer. A [`TileName`] is `"<ix>_<iy>"`,
//! the integer indices of a square cell of a [`TileGrid`] over the map frame (x east, y north,
//! metres). Names use only `[A-Za-z0-9_.-]`, so they can be used verbatim as one chunk of a
//! Zenoh key expression or a file name.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use twinlink_msgs::twin_msgs::msg::SharedObservation;

/// Edge length of a tile unless configured otherwise (m).
pub const DEFAULT_TILE_SIZE_M: f64 = 1000.0;

/// Most tiles [`TileGrid::tiles_along`] and [`TileGrid::tiles_near`] return: a defence
/// against absurd inputs (a route of a million kilometres), far above any real lookup.
pub const MAX_TILES_PER_LOOKUP: usize = 10_000;

/// Why a tile grid or a name was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TileError {
    /// The tile size is not a positive, finite number of metres.
    #[error("tile size {0} m must be a positive, finite number of metres")]
    BadSize(f64),
    /// A string is not a canonical tile name `"<ix>_<iy>"`.
    #[error("{0:?} is not a tile name: expected \"<ix>_<iy>\" with canonical decimal integers")]
    BadName(String),
    /// A string is not a category name.
    #[error("{0:?} is not a category: expected hazards, objects or traffic")]
    BadCategory(String),
    /// A string is not a data name `"<category>/<tile>"`.
    #[error("{0:?} is not a data name: expected \"<category>/<ix>_<iy>\"")]
    BadDataName(String),
}

/// The name of one tile: `"<ix>_<iy>"`, e.g. `"12_-3"`.
///
/// Tile `(ix, iy)` covers `ix·size <= x < (ix+1)·size` and `iy·size <= y < (iy+1)·size`.
/// Names are canonical (no `+`, no leading zeros, no `-0`), so two names are equal exactly
/// when they name the same tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileName {
    ix: i64,
    iy: i64,
}

impl TileName {
    /// The tile with indices `(ix, iy)`.
    pub fn new(ix: i64, iy: i64) -> Self {
        Self { ix, iy }
    }

    /// Index along x (east).
    pub fn ix(&self) -> i64 {
        self.ix
    }

    /// Index along y (north).
    pub fn iy(&self) -> i64 {
        self.iy
    }

    /// Parses a canonical name; same as `str::parse`.
    pub fn parse(name: &str) -> Result<Self, TileError> {
        name.parse()
    }

    /// The eight tiles around this one, counter-clockwise from east.
    pub fn neighbours(&self) -> [TileName; 8] {
        const STEPS: [(i64, i64); 8] = [
            (1, 0),
            (1, 1),
            (0, 1),
            (-1, 1),
            (-1, 0),
            (-1, -1),
            (0, -1),
            (1, -1),
        ];
        STEPS.map(|(dx, dy)| TileName::new(self.ix.saturating_add(dx), self.iy.saturating_add(dy)))
    }
}

impl fmt::Display for TileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.ix, self.iy)
    }
}

/// Parses one canonical decimal integer: optional `-`, no leading zeros, no `-0`.
fn parse_index(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || (text.starts_with('-') && digits == "0")
    {
        return None;
    }
    text.parse().ok()
}

impl FromStr for TileName {
    type Err = TileError;

    fn from_str(name: &str) -> Result<Self, TileError> {
        let bad = || TileError::BadName(name.to_string());
        let (x, y) = name.split_once('_').ok_or_else(bad)?;
        Ok(TileName::new(
            parse_index(x).ok_or_else(bad)?,
            parse_index(y).ok_or_else(bad)?,
        ))
    }
}

/// A square grid of tiles over the map frame, anchored at the map origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileGrid {
    /// Edge length of a tile (m); positive and finite (see [`TileGrid::new`]).
    pub size_m: f64,
}

impl Default for TileGrid {
    fn default() -> Self {
        Self {
            size_m: DEFAULT_TILE_SIZE_M,
        }
    }
}

impl TileGrid {
    /// A grid of `size_m`-metre tiles; refuses sizes that are not positive and finite.
    pub fn new(size_m: f64) -> Result<Self, TileError> {
        if size_m.is_finite() && size_m > 0.0 {
            Ok(Self { size_m })
        } else {
            Err(TileError::BadSize(size_m))
        }
    }

    fn index(&self, v: f64) -> i64 {
        // `as` saturates: coordinates beyond ±9.2e18 tiles land on the outermost tile and NaN
        // on tile 0. Callers that disclose positions reject non-finite ones first (coarsen).
        (v / self.size_m).floor() as i64
    }

    /// The tile that contains the point `(x, y)` (m, map frame).
    ///
    /// Points on a boundary belong to the tile east/north of it. Non-finite coordinates
    /// saturate (NaN maps to index 0); reject them before naming data.
    pub fn tile_of(&self, x: f64, y: f64) -> TileName {
        TileName::new(self.index(x), self.index(y))
    }

    /// The centre of a tile (m, map frame).
    pub fn centre(&self, tile: TileName) -> (f64, f64) {
        (
            (tile.ix as f64 + 0.5) * self.size_m,
            (tile.iy as f64 + 0.5) * self.size_m,
        )
    }

    /// The tiles that intersect the square of half-width `radius_m` around `(x, y)`, row by
    /// row from south-west; at most [`MAX_TILES_PER_LOOKUP`]. Empty for a non-finite input
    /// or a negative radius.
    pub fn tiles_near(&self, x: f64, y: f64, radius_m: f64) -> Vec<TileName> {
        if !(x.is_finite() && y.is_finite() && radius_m.is_finite() && radius_m >= 0.0) {
            return Vec::new();
        }
        let (x0, x1) = (self.index(x - radius_m), self.index(x + radius_m));
        let (y0, y1) = (self.index(y - radius_m), self.index(y + radius_m));
        let mut out = Vec::new();
        'rows: for iy in y0..=y1 {
            for ix in x0..=x1 {
                if out.len() == MAX_TILES_PER_LOOKUP {
                    break 'rows;
                }
                out.push(TileName::new(ix, iy));
            }
        }
        out
    }

    /// The tiles that the stretch `[from_s, to_s]` of a polyline passes through, in the order
    /// it reaches them, each once (a tile entered a second time is not repeated).
    ///
    /// `s` is the distance along the polyline from its first point (m); the stretch is clamped
    /// to the polyline. Empty when `to_s < from_s`, when either is NaN or when the polyline
    /// is empty; a single point yields its tile. Segments with a non-finite end are skipped and
    /// do not count towards `s`.
    /// A line through a tile corner also yields one of the two tiles it only touches. At most
    /// [`MAX_TILES_PER_LOOKUP`] tiles.
    pub fn tiles_along(&self, polyline: &[(f64, f64)], from_s: f64, to_s: f64) -> Vec<TileName> {
        let mut walk = Walk::default();
        if polyline.is_empty() || from_s.is_nan() || to_s.is_nan() || to_s < from_s {
            return walk.tiles;
        }
        let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
        if polyline.len() == 1 {
            if finite(&polyline[0]) && from_s <= 0.0 && to_s >= 0.0 {
                walk.push(self.tile_of(polyline[0].0, polyline[0].1));
            }
            return walk.tiles;
        }
        let mut s0 = 0.0;
        for pair in polyline.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if !(finite(&a) && finite(&b)) {
                continue;
            }
            let length = (b.0 - a.0).hypot(b.1 - a.1);
            let s1 = s0 + length;
            // The part of this segment inside [from_s, to_s], as fractions of its length.
            let (lo, hi) = (from_s.max(s0), to_s.min(s1));
            if lo <= hi {
                let at = |s: f64| {
                    let t = if length > 0.0 { (s - s0) / length } else { 0.0 };
                    (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
                };
                self.walk_segment(at(lo), at(hi), &mut walk);
            }
            if walk.full() || s1 > to_s {
                break;
            }
            s0 = s1;
        }
        walk.tiles
    }

    /// Adds the tiles of the straight segment p → q, in order (grid traversal after
    /// Amanatides and Woo).
    fn walk_segment(&self, p: (f64, f64), q: (f64, f64), walk: &mut Walk) {
        let (mut ix, mut iy) = (self.index(p.0), self.index(p.1));
        let (ex, ey) = (self.index(q.0), self.index(q.1));
        walk.push(TileName::new(ix, iy));
        let (dx, dy) = (q.0 - p.0, q.1 - p.1);
        let axis = |d: f64, i: i64, p: f64| -> (i64, f64, f64) {
            if d > 0.0 {
                (1, ((i as f64 + 1.0) * self.size_m - p) / d, self.size_m / d)
            } else if d < 0.0 {
                (-1, (i as f64 * self.size_m - p) / d, -self.size_m / d)
            } else {
                (0, f64::INFINITY, f64::INFINITY)
            }
        };
        let (step_x, mut t_x, dt_x) = axis(dx, ix, p.0);
        let (step_y, mut t_y, dt_y) = axis(dy, iy, p.1);
        let steps = ex.abs_diff(ix).saturating_add(ey.abs_diff(iy));
        for _ in 0..steps {
            if walk.full() {
                return;
            }
            // Step along the axis whose boundary comes first, but never past the end tile:
            // rounding cannot make the walk miss its end.
            let along_x = if ix == ex {
                false
            } else if iy == ey {
                true
            } else {
                t_x <= t_y
            };
            if along_x {
                ix += step_x;
                t_x += dt_x;
            } else {
                iy += step_y;
                t_y += dt_y;
            }
            walk.push(TileName::new(ix, iy));
        }
    }
}

/// Tiles collected in order, without repeats, up to the lookup cap.
#[derive(Default)]
struct Walk {
    tiles: Vec<TileName>,
    seen: HashSet<TileName>,
}

impl Walk {
    fn push(&mut self, tile: TileName) {
        if !self.full() && self.seen.insert(tile) {
            self.tiles.push(tile);
        }
    }

    fn full(&self) -> bool {
        self.tiles.len() >= MAX_TILES_PER_LOOKUP
    }
}

/// A category of shared data (`SharedObservation::CATEGORY_*`) with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `CATEGORY_HAZARDS`, named `hazards`.
    Hazards,
    /// `CATEGORY_OBJECTS`, named `objects`.
    Objects,
    /// `CATEGORY_TRAFFIC`, named `traffic`.
    Traffic,
}

impl Category {
    /// Every category, in the order of their numbers.
    pub const ALL: [Category; 3] = [Category::Hazards, Category::Objects, Category::Traffic];

    /// The category with message value `value`, if any.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            SharedObservation::CATEGORY_HAZARDS => Some(Self::Hazards),
            SharedObservation::CATEGORY_OBJECTS => Some(Self::Objects),
            SharedObservation::CATEGORY_TRAFFIC => Some(Self::Traffic),
            _ => None,
        }
    }

    /// The message value (`SharedObservation::CATEGORY_*`).
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Hazards => SharedObservation::CATEGORY_HAZARDS,
            Self::Objects => SharedObservation::CATEGORY_OBJECTS,
            Self::Traffic => SharedObservation::CATEGORY_TRAFFIC,
        }
    }

    /// The name used in data names and metrics: `hazards`, `objects`, `traffic`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hazards => "hazards",
            Self::Objects => "objects",
            Self::Traffic => "traffic",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Category {
    type Err = TileError;

    fn from_str(name: &str) -> Result<Self, TileError> {
        Category::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| TileError::BadCategory(name.to_string()))
    }
}

/// The name of a category value (`SharedObservation::CATEGORY_*`), or `None` if unknown.
pub fn category_name(category: u8) -> Option<&'static str> {
    Category::from_u8(category).map(Category::name)
}

/// The category value (`SharedObservation::CATEGORY_*`) of a name, or `None` if unknown.
pub fn parse_category(name: &str) -> Option<u8> {
    name.parse::<Category>().ok().map(Category::as_u8)
}

/// What a twin publishes under and asks for: `"<category>/<tile>"`, e.g. `"hazards/12_-3"`.
///
/// The transport puts its own prefix in front (a Zenoh key expression such as
/// `twinlink/share/hazards/12_-3`); the name carries no vehicle, twin or pseudonym.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataName {
    /// What kind of data.
    pub category: Category,
    /// Where.
    pub tile: TileName,
}

impl DataName {
    /// The name of `category` data in `tile`.
    pub fn new(category: Category, tile: TileName) -> Self {
        Self { category, tile }
    }
}

impl fmt::Display for DataName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.category, self.tile)
    }
}

impl FromStr for DataName {
    type Err = TileError;

    fn from_str(name: &str) -> Result<Self, TileError> {
        let bad = || TileError::BadDataName(name.to_string());
        let (category, tile) = name.split_once('/').ok_or_else(bad)?;
        Ok(DataName::new(
            category.parse().map_err(|_| bad())?,
            tile.parse().map_err(|_| bad())?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ix: i64, iy: i64) -> TileName {
        TileName::new(ix, iy)
    }

    #[test]
    fn tiles_of_points_including_negative_coordinates_and_boundaries() {
        let g = TileGrid::default();
        assert_eq!(g.tile_of(12_345.0, -2_500.0).to_string(), "12_-3");
        assert_eq!(g.tile_of(0.0, 0.0), t(0, 0));
        assert_eq!(g.tile_of(-0.001, 999.999), t(-1, 0));
        assert_eq!(g.tile_of(-1000.0, -1000.0), t(-1, -1));
        assert_eq!(g.tile_of(-1000.001, 1000.0), t(-2, 1));
        assert_eq!(
            g.tile_of(1000.0, 0.0),
            t(1, 0),
            "a boundary belongs to the east"
        );
        let small = TileGrid::new(250.0).unwrap();
        assert_eq!(small.tile_of(-250.0, 249.9), t(-1, 0));
        assert_eq!(small.centre(t(-1, 0)), (-125.0, 125.0));
        assert!(TileGrid::new(0.0).is_err());
        assert!(TileGrid::new(f64::NAN).is_err());
        assert!(TileGrid::new(-5.0).is_err());
    }

    #[test]
    fn names_round_trip_and_only_canonical_names_parse() {
        for tile in [t(0, 0), t(12, -3), t(-7, 41), t(i64::MIN, i64::MAX)] {
            let name = tile.to_string();
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            assert_eq!(TileName::parse(&name).unwrap(), tile);
        }
        for bad in [
            "",
            "_",
            "1_",
            "_1",
            "1",
            "1_2_3",
            "+1_2",
            "01_2",
            "-0_1",
            "1_-0",
            "1.5_2",
            " 1_2",
            "a_b",
            "1_2 ",
            "99999999999999999999_0",
        ] {
            assert!(TileName::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn neighbours_surround_the_tile() {
        let n = t(0, -1).neighbours();
        let set: HashSet<_> = n.iter().copied().collect();
        assert_eq!(set.len(), 8);
        for tile in n {
            assert!(tile.ix().abs() <= 1 && (tile.iy() + 1).abs() <= 1);
            assert_ne!(tile, t(0, -1));
        }
        assert_eq!(n[0], t(1, -1));
    }

    #[test]
    fn tiles_near_cover_the_square() {
        let g = TileGrid::default();
        assert_eq!(g.tiles_near(500.0, 500.0, 100.0), vec![t(0, 0)]);
        assert_eq!(
            g.tiles_near(0.0, 0.0, 1.0),
            vec![t(-1, -1), t(0, -1), t(-1, 0), t(0, 0)]
        );
        assert!(g.tiles_near(0.0, 0.0, -1.0).is_empty());
        assert_eq!(g.tiles_near(0.0, 0.0, 1e12).len(), MAX_TILES_PER_LOOKUP);
    }

    #[test]
    fn a_route_through_several_tiles_in_order_without_repeats() {
        let g = TileGrid::default();
        // East along y = 500 from x = -1500, then north, then back south-west through
        // row 1: each tile once, in the order reached.
        let route = [
            (-1500.0, 500.0),
            (1500.0, 500.0),
            (1500.0, 2500.0),
            (-500.0, 1500.0),
        ];
        let all = g.tiles_along(&route, 0.0, f64::INFINITY);
        assert_eq!(&all[..4], &[t(-2, 0), t(-1, 0), t(0, 0), t(1, 0)]);
        assert_eq!(&all[4..6], &[t(1, 1), t(1, 2)]);
        assert!(all.contains(&t(0, 2)) && all.contains(&t(-1, 1)));
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert_eq!(all.last(), Some(&t(-1, 1)));
        // Each tile after the first touches an earlier one (the walk has no gaps).
        for (i, tile) in all.iter().enumerate().skip(1) {
            assert!(
                all[..i].iter().any(|p| p.neighbours().contains(tile)),
                "{tile} is cut off"
            );
        }

        // Only the stretch from 1200 m to 2600 m: x from -300 to 1100 on the first leg.
        assert_eq!(
            g.tiles_along(&route, 1200.0, 2600.0),
            vec![t(-1, 0), t(0, 0), t(1, 0)]
        );
        // A stretch that starts on the second leg.
        assert_eq!(
            g.tiles_along(&route, 3000.0, 4900.0),
            vec![t(1, 0), t(1, 1), t(1, 2)]
        );
        // Negative coordinates, heading south-west diagonally.
        let sw = g.tiles_along(&[(-10.0, -10.0), (-1990.0, -1990.0)], 0.0, 1e9);
        assert_eq!(sw.first(), Some(&t(-1, -1)));
        assert_eq!(sw.last(), Some(&t(-2, -2)));
        assert!(sw.len() == 2 || sw.len() == 3, "{sw:?}");
    }

    #[test]
    fn degenerate_routes() {
        let g = TileGrid::default();
        assert!(g.tiles_along(&[], 0.0, 10.0).is_empty());
        assert_eq!(g.tiles_along(&[(5.0, -5.0)], 0.0, 10.0), vec![t(0, -1)]);
        assert!(g
            .tiles_along(&[(5.0, 5.0), (3000.0, 5.0)], 20.0, 10.0)
            .is_empty());
        assert!(g
            .tiles_along(&[(5.0, 5.0), (3000.0, 5.0)], f64::NAN, 10.0)
            .is_empty());
        assert!(g
            .tiles_along(&[(5.0, 5.0), (3000.0, 5.0)], 5000.0, 6000.0)
            .is_empty());
        assert_eq!(
            g.tiles_along(&[(5.0, 5.0), (f64::NAN, 0.0), (5.0, 1005.0)], 0.0, 1e9),
            Vec::<TileName>::new(),
            "segments with a NaN end are skipped"
        );
        let far = g.tiles_along(&[(0.0, 0.0), (1e15, 0.0)], 0.0, f64::INFINITY);
        assert_eq!(far.len(), MAX_TILES_PER_LOOKUP);
    }

    #[test]
    fn categories_and_data_names() {
        assert_eq!(
            category_name(SharedObservation::CATEGORY_HAZARDS),
            Some("hazards")
        );
        assert_eq!(
            category_name(SharedObservation::CATEGORY_OBJECTS),
            Some("objects")
        );
        assert_eq!(
            category_name(SharedObservation::CATEGORY_TRAFFIC),
            Some("traffic")
        );
        assert_eq!(category_name(0), None);
        assert_eq!(parse_category("traffic"), Some(3));
        assert_eq!(parse_category("Traffic"), None);
        let name = DataName::new(Category::Hazards, t(12, -3));
        assert_eq!(name.to_string(), "hazards/12_-3");
        assert_eq!("hazards/12_-3".parse::<DataName>().unwrap(), name);
        assert!("hazards/12_-3/x".parse::<DataName>().is_err());
        assert!("cars/1_2".parse::<DataName>().is_err());
    }
}
