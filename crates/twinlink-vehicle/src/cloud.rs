//! Reading sensor_msgs/PointCloud2 by its field descriptions.
//!
//! A cloud's layout is whatever its publisher chose: field offsets, types, padding and byte
//! order all come from `fields`, `point_step` and `is_bigendian`. [`FieldReader`] finds a
//! named field and reads it from any point as `f32`, whatever its stored type; [`read_xyz`]
//! validates the whole message first and returns every point with finite coordinates,
//! counting the rest.

use twinlink_msgs::sensor_msgs::msg::{PointCloud2, PointField};

/// Largest cloud a summarizer accepts, in points (a 128-beam LiDAR at 2048 columns is 262,144).
pub const DEFAULT_MAX_POINTS: usize = 2_000_000;

/// Why a PointCloud2 cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloudError {
    /// A field the reader needs is absent.
    #[error("PointCloud2 has no field {name:?} (fields: {available})")]
    MissingField {
        /// The field looked for (the first of its accepted names).
        name: String,
        /// Names the cloud has, comma separated.
        available: String,
    },
    /// A field's datatype is not one of PointField's constants.
    #[error("PointCloud2 field {name:?} has unknown datatype {datatype}")]
    UnknownDatatype {
        /// Field name.
        name: String,
        /// The datatype given.
        datatype: u8,
    },
    /// A field has a type the reader cannot use for it (e.g. an integer x).
    #[error("PointCloud2 field {name:?} is {found}, expected {expected}")]
    WrongDatatype {
        /// Field name.
        name: String,
        /// The datatype given.
        found: &'static str,
        /// What the reader accepts.
        expected: &'static str,
    },
    /// A field does not fit inside one point.
    #[error("PointCloud2 field {name:?} at offset {offset} with {size} bytes does not fit in point_step {point_step}")]
    FieldOutsidePoint {
        /// Field name.
        name: String,
        /// Offset given.
        offset: u32,
        /// Size of the field in bytes.
        size: u32,
        /// Size of a point.
        point_step: u32,
    },
    /// point_step is zero while the cloud has points.
    #[error("PointCloud2 point_step is 0 for {points} points")]
    ZeroPointStep {
        /// width * height.
        points: u64,
    },
    /// row_step is smaller than width * point_step.
    #[error(
        "PointCloud2 row_step {row_step} is smaller than width {width} x point_step {point_step}"
    )]
    RowTooShort {
        /// Bytes per row given.
        row_step: u32,
        /// Points per row.
        width: u32,
        /// Bytes per point.
        point_step: u32,
    },
    /// data is shorter than row_step * height.
    #[error("PointCloud2 data has {actual} bytes, row_step {row_step} x height {height} needs {expected}")]
    DataSize {
        /// Bytes needed.
        expected: u64,
        /// Bytes present.
        actual: usize,
        /// Bytes per row.
        row_step: u32,
        /// Rows.
        height: u32,
    },
    /// More points than the reader accepts.
    #[error("PointCloud2 has {points} points, more than the limit of {max}")]
    TooManyPoints {
        /// width * height.
        points: u64,
        /// The limit.
        max: usize,
    },
}

impl CloudError {
    /// A short, stable name of the error kind, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            CloudError::MissingField { .. } => "missing_field",
            CloudError::UnknownDatatype { .. } => "unknown_datatype",
            CloudError::WrongDatatype { .. } => "wrong_datatype",
            CloudError::FieldOutsidePoint { .. } => "field_outside_point",
            CloudError::ZeroPointStep { .. } => "zero_point_step",
            CloudError::RowTooShort { .. } => "row_too_short",
            CloudError::DataSize { .. } => "data_size",
            CloudError::TooManyPoints { .. } => "too_many_points",
        }
    }
}

/// Size in bytes of a PointField datatype, or `None` for an unknown one.
pub fn datatype_size(datatype: u8) -> Option<u32> {
    match datatype {
        PointField::INT8 | PointField::UINT8 => Some(1),
        PointField::INT16 | PointField::UINT16 => Some(2),
        PointField::INT32 | PointField::UINT32 | PointField::FLOAT32 => Some(4),
        PointField::FLOAT64 => Some(8),
        _ => None,
    }
}

fn datatype_name(datatype: u8) -> &'static str {
    match datatype {
        PointField::INT8 => "INT8",
        PointField::UINT8 => "UINT8",
        PointField::INT16 => "INT16",
        PointField::UINT16 => "UINT16",
        PointField::INT32 => "INT32",
        PointField::UINT32 => "UINT32",
        PointField::FLOAT32 => "FLOAT32",
        PointField::FLOAT64 => "FLOAT64",
        _ => "unknown",
    }
}

/// Which stored types a field may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// FLOAT32 or FLOAT64 (coordinates, velocities).
    Float,
    /// Any numeric type (intensity is UINT8, UINT16 or FLOAT32 depending on the driver).
    Numeric,
}

/// Reads one field of a validated cloud as `f32`.
#[derive(Debug, Clone, Copy)]
pub struct FieldReader {
    offset: usize,
    datatype: u8,
    big_endian: bool,
}

impl FieldReader {
    /// Finds the first field whose name is one of `names` and checks its type and bounds.
    pub fn find(cloud: &PointCloud2, names: &[&str], accept: Accept) -> Result<Self, CloudError> {
        let field = cloud
            .fields
            .iter()
            .find(|f| names.contains(&f.name.as_str()))
            .ok_or_else(|| CloudError::MissingField {
                name: names.first().copied().unwrap_or_default().to_string(),
                available: cloud
                    .fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Self::for_field(cloud, field, accept)
    }

    /// Like [`FieldReader::find`], but `Ok(None)` when no field has any of the names.
    pub fn find_optional(
        cloud: &PointCloud2,
        names: &[&str],
        accept: Accept,
    ) -> Result<Option<Self>, CloudError> {
        match cloud
            .fields
            .iter()
            .find(|f| names.contains(&f.name.as_str()))
        {
            Some(field) => Self::for_field(cloud, field, accept).map(Some),
            None => Ok(None),
        }
    }

    fn for_field(
        cloud: &PointCloud2,
        field: &PointField,
        accept: Accept,
    ) -> Result<Self, CloudError> {
        let size = datatype_size(field.datatype).ok_or_else(|| CloudError::UnknownDatatype {
            name: field.name.clone(),
            datatype: field.datatype,
        })?;
        if accept == Accept::Float
            && field.datatype != PointField::FLOAT32
            && field.datatype != PointField::FLOAT64
        {
            return Err(CloudError::WrongDatatype {
                name: field.name.clone(),
                found: datatype_name(field.datatype),
                expected: "FLOAT32 or FLOAT64",
            });
        }
        if u64::from(field.offset) + u64::from(size) > u64::from(cloud.point_step) {
            return Err(CloudError::FieldOutsidePoint {
                name: field.name.clone(),
                offset: field.offset,
                size,
                point_step: cloud.point_step,
            });
        }
        Ok(FieldReader {
            offset: field.offset as usize,
            datatype: field.datatype,
            big_endian: cloud.is_bigendian,
        })
    }

    /// The field's value in the point starting at `point` (at least point_step bytes long).
    #[inline]
    pub fn read(&self, point: &[u8]) -> f32 {
        let at = self.offset;
        macro_rules! get {
            ($t:ty, $n:literal) => {{
                let bytes: [u8; $n] = point[at..at + $n].try_into().expect("bounds checked");
                if self.big_endian {
                    <$t>::from_be_bytes(bytes)
                } else {
                    <$t>::from_le_bytes(bytes)
                }
            }};
        }
        match self.datatype {
            PointField::FLOAT32 => get!(f32, 4),
            PointField::FLOAT64 => get!(f64, 8) as f32,
            PointField::INT8 => point[at] as i8 as f32,
            PointField::UINT8 => point[at] as f32,
            PointField::INT16 => get!(i16, 2) as f32,
            PointField::UINT16 => get!(u16, 2) as f32,
            PointField::INT32 => get!(i32, 4) as f32,
            PointField::UINT32 => get!(u32, 4) as f32,
            _ => f32::NAN,
        }
    }
}

/// Checks a cloud's geometry (steps, sizes, limits) and returns its point count.
pub fn validate(cloud: &PointCloud2, max_points: usize) -> Result<usize, CloudError> {
    let points = u64::from(cloud.width) * u64::from(cloud.height);
    if points > max_points as u64 {
        return Err(CloudError::TooManyPoints {
            points,
            max: max_points,
        });
    }
    if points == 0 {
        return Ok(0);
    }
    if cloud.point_step == 0 {
        return Err(CloudError::ZeroPointStep { points });
    }
    if u64::from(cloud.row_step) < u64::from(cloud.width) * u64::from(cloud.point_step) {
        return Err(CloudError::RowTooShort {
            row_step: cloud.row_step,
            width: cloud.width,
            point_step: cloud.point_step,
        });
    }
    let expected = u64::from(cloud.row_step) * u64::from(cloud.height);
    if (cloud.data.len() as u64) < expected {
        return Err(CloudError::DataSize {
            expected,
            actual: cloud.data.len(),
            row_step: cloud.row_step,
            height: cloud.height,
        });
    }
    Ok(points as usize)
}

/// Calls `f` with the bytes of every point, row by row (rows may be padded).
pub fn for_each_point(cloud: &PointCloud2, mut f: impl FnMut(&[u8])) {
    let step = cloud.point_step as usize;
    let row_step = cloud.row_step as usize;
    for row in 0..cloud.height as usize {
        let row_bytes = &cloud.data[row * row_step..row * row_step + cloud.width as usize * step];
        for point in row_bytes.chunks_exact(step) {
            f(point);
        }
    }
}

/// Points of a cloud with finite coordinates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Points {
    /// x, y, z in the cloud's frame [m].
    pub xyz: Vec<[f32; 3]>,
    /// Intensity per point, if the cloud has an intensity field.
    pub intensity: Option<Vec<f32>>,
    /// Points skipped because a coordinate was NaN or infinite.
    pub non_finite: usize,
}

/// Reads x, y, z (and intensity, if present) of every point with finite coordinates.
pub fn read_xyz(cloud: &PointCloud2, max_points: usize) -> Result<Points, CloudError> {
    let n = validate(cloud, max_points)?;
    if n == 0 {
        return Ok(Points::default());
    }
    let x = FieldReader::find(cloud, &["x"], Accept::Float)?;
    let y = FieldReader::find(cloud, &["y"], Accept::Float)?;
    let z = FieldReader::find(cloud, &["z"], Accept::Float)?;
    let intensity = FieldReader::find_optional(cloud, &["intensity", "i"], Accept::Numeric)?;
    let mut out = Points {
        xyz: Vec::with_capacity(n),
        intensity: intensity.map(|_| Vec::with_capacity(n)),
        non_finite: 0,
    };
    for_each_point(cloud, |p| {
        let point = [x.read(p), y.read(p), z.read(p)];
        if point.iter().all(|c| c.is_finite()) {
            out.xyz.push(point);
            if let (Some(reader), Some(values)) = (&intensity, &mut out.intensity) {
                values.push(reader.read(p));
            }
        } else {
            out.non_finite += 1;
        }
    });
    Ok(out)
}

/// Builds an unorganized cloud of float32 fields named `names`, one record per row of
/// `values` (each exactly `names.len()` long). Used by tests, benchmarks and the simulator.
pub fn build_f32_cloud(frame_id: &str, names: &[&str], values: &[Vec<f32>]) -> PointCloud2 {
    let point_step = 4 * names.len() as u32;
    let mut data = Vec::with_capacity(values.len() * point_step as usize);
    for v in values {
        assert_eq!(v.len(), names.len(), "one value per field");
        for c in v {
            data.extend_from_slice(&c.to_le_bytes());
        }
    }
    PointCloud2 {
        header: twinlink_msgs::std_msgs::msg::Header {
            frame_id: frame_id.into(),
            ..Default::default()
        },
        height: 1,
        width: values.len() as u32,
        fields: names
            .iter()
            .enumerate()
            .map(|(i, name)| PointField {
                name: name.to_string(),
                offset: 4 * i as u32,
                datatype: PointField::FLOAT32,
                count: 1,
            })
            .collect(),
        is_bigendian: false,
        point_step,
        row_step: point_step * values.len() as u32,
        data,
        is_dense: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xyz_cloud(points: &[[f32; 3]]) -> PointCloud2 {
        build_f32_cloud(
            "lidar",
            &["x", "y", "z"],
            &points.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn reads_any_layout_by_its_field_offsets() {
        // Big-endian float64 coordinates at scattered offsets, uint16 intensity, padding.
        let mut cloud = PointCloud2 {
            height: 1,
            width: 2,
            is_bigendian: true,
            point_step: 32,
            row_step: 64,
            ..Default::default()
        };
        for (name, offset, datatype) in [
            ("intensity", 0, PointField::UINT16),
            ("z", 4, PointField::FLOAT64),
            ("x", 12, PointField::FLOAT32),
            ("y", 20, PointField::FLOAT64),
        ] {
            cloud.fields.push(PointField {
                name: name.into(),
                offset,
                datatype,
                count: 1,
            });
        }
        for (x, y, z, i) in [(1.5f32, -2.0f64, 0.25f64, 7u16), (3.0, 4.0, -1.0, 300)] {
            let mut p = vec![0u8; 32];
            p[0..2].copy_from_slice(&i.to_be_bytes());
            p[4..12].copy_from_slice(&z.to_be_bytes());
            p[12..16].copy_from_slice(&x.to_be_bytes());
            p[20..28].copy_from_slice(&y.to_be_bytes());
            cloud.data.extend(p);
        }
        let points = read_xyz(&cloud, 10).unwrap();
        assert_eq!(points.xyz, vec![[1.5, -2.0, 0.25], [3.0, 4.0, -1.0]]);
        assert_eq!(points.intensity, Some(vec![7.0, 300.0]));
    }

    #[test]
    fn organized_clouds_with_padded_rows_and_nan_points() {
        let mut cloud = xyz_cloud(&[[1.0, 2.0, 3.0], [f32::NAN, 0.0, 0.0]]);
        // Two rows of one point each, with 4 bytes of padding per row.
        cloud.height = 2;
        cloud.width = 1;
        cloud.row_step = 16;
        let mut data = cloud.data[0..12].to_vec();
        data.extend([0; 4]);
        data.extend(&cloud.data[12..24]);
        data.extend([0; 4]);
        cloud.data = data;
        let points = read_xyz(&cloud, 10).unwrap();
        assert_eq!(points.xyz, vec![[1.0, 2.0, 3.0]]);
        assert_eq!(points.non_finite, 1);
    }

    #[test]
    fn malformed_clouds_are_refused_with_the_reason() {
        let good = xyz_cloud(&[[1.0, 2.0, 3.0]; 4]);
        let mut short = good.clone();
        short.data.truncate(20);
        assert_eq!(read_xyz(&short, 10).unwrap_err().kind(), "data_size");
        let mut int_x = good.clone();
        int_x.fields[0].datatype = PointField::INT32;
        let e = read_xyz(&int_x, 10).unwrap_err();
        assert!(e.to_string().contains("\"x\" is INT32"), "{e}");
        let mut outside = good.clone();
        outside.fields[2].offset = 10;
        assert_eq!(
            read_xyz(&outside, 10).unwrap_err().kind(),
            "field_outside_point"
        );
        let mut no_z = good.clone();
        no_z.fields.pop();
        let e = read_xyz(&no_z, 10).unwrap_err();
        assert!(
            e.to_string().contains("no field \"z\" (fields: x, y)"),
            "{e}"
        );
        let mut unknown = good.clone();
        unknown.fields[1].datatype = 42;
        assert_eq!(
            read_xyz(&unknown, 10).unwrap_err().kind(),
            "unknown_datatype"
        );
        assert_eq!(read_xyz(&good, 3).unwrap_err().kind(), "too_many_points");
        let mut zero = good.clone();
        zero.point_step = 0;
        assert_eq!(read_xyz(&zero, 10).unwrap_err().kind(), "zero_point_step");
        let mut row = good.clone();
        row.row_step = 8;
        assert_eq!(read_xyz(&row, 10).unwrap_err().kind(), "row_too_short");
        let empty = PointCloud2::default();
        assert_eq!(read_xyz(&empty, 10).unwrap(), Points::default());
    }

    proptest::proptest! {
        #[test]
        fn any_cloud_either_reads_or_is_refused(
            width in 0u32..50, height in 0u32..4, point_step in 0u32..40, row_extra in 0u32..8,
            offsets in proptest::collection::vec((0u32..48, 0u8..10), 3),
            data_len in 0usize..4000, big in proptest::bool::ANY,
        ) {
            let names = ["x", "y", "z"];
            let cloud = PointCloud2 {
                height, width, point_step, is_bigendian: big,
                row_step: width * point_step + row_extra,
                fields: offsets.iter().zip(names).map(|((offset, datatype), name)| PointField {
                    name: name.into(), offset: *offset, datatype: *datatype, count: 1 }).collect(),
                data: vec![0x41; data_len],
                ..Default::default()
            };
            if let Ok(points) = read_xyz(&cloud, 1000) {
                proptest::prop_assert!(points.xyz.len() + points.non_finite == (width * height) as usize);
            }
        }
    }
}
