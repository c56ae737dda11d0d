//! Formats: how the records of one object become its bytes. JSON Lines
//! and raw lines are buffered and compressed when the object closes;
//! Parquet rows are decoded into Arrow and encoded as they come (row groups
//! flushed), so an open Parquet object holds encoded bytes, not rows.
//! Every encoder is deterministic: the same records in the same order give
//! the same bytes (no write times, no random ids), which is what makes a
//! replayed object identical to the one written before a crash.

use super::config::{Compression, FieldSpec, TypeSpec};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::io::Write as _;
use std::sync::Arc;

/// Arrow schema of configured columns; errors name the column.
pub fn arrow_schema(fields: &[FieldSpec]) -> Result<Schema, String> {
    Ok(Schema::new(arrow_fields(fields, "")?))
}

fn arrow_fields(fields: &[FieldSpec], parent: &str) -> Result<Vec<Field>, String> {
    let mut out = Vec::with_capacity(fields.len());
    let mut seen = std::collections::BTreeSet::new();
    for f in fields {
        let name = format!("{parent}{}", f.name);
        if f.name.is_empty() || !seen.insert(f.name.as_str()) {
            return Err(format!("column `{name}` is empty or given twice"));
        }
        out.push(Field::new(&f.name, arrow_type(&f.ty, &name)?, f.nullable));
    }
    Ok(out)
}

fn arrow_type(t: &TypeSpec, name: &str) -> Result<DataType, String> {
    Ok(match t {
        TypeSpec::Name(n) => match n.as_str() {
            "string" | "utf8" => DataType::Utf8,
            "int64" | "long" | "bigint" => DataType::Int64,
            "int32" | "int" | "integer" => DataType::Int32,
            "float64" | "double" => DataType::Float64,
            "float32" | "float" => DataType::Float32,
            "boolean" | "bool" => DataType::Boolean,
            "timestamp" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            "date" => DataType::Date32,
            other => {
                return Err(format!(
                    "column `{name}`: unknown type `{other}` (string, int64, int32, float64, float32, boolean, timestamp, date, {{ list = T }}, {{ struct = [..] }})"
                ));
            }
        },
        TypeSpec::List { list } => DataType::List(Arc::new(Field::new(
            "item",
            arrow_type(list, &format!("{name}[]"))?,
            true,
        ))),
        TypeSpec::Struct { fields } => {
            DataType::Struct(Fields::from(arrow_fields(fields, &format!("{name}."))?))
        }
    })
}

/// Infers a schema from sample values (JSON objects): every column
/// nullable, a column seen only as null becomes a string, and every JSON
/// number a `double`, at any depth: an amount that happens to be whole in
/// the first records (`12`) is followed by `12.5` later, and a column
/// inferred as `int64` would send every such record to the dead-letter
/// queue. A configured `schema` is the way to `int64` columns.
pub fn infer(values: &[serde_json::Value]) -> Result<Schema, String> {
    let schema = arrow_json::reader::infer_json_schema_from_iterator(
        values.iter().filter(|v| v.is_object()).map(Ok),
    )
    .map_err(|e| e.to_string())?;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.data_type() {
                DataType::Null => DataType::Utf8,
                t => widened(t),
            };
            Field::new(f.name(), ty, true)
        })
        .collect();
    if fields.is_empty() {
        return Err("the first records hold no JSON object with fields".into());
    }
    let schema = Schema::new(fields);
    // Only types `fits` knows.
    for f in schema.fields() {
        supported(f.data_type()).map_err(|t| format!("column `{}`: {t}", f.name()))?;
    }
    Ok(schema)
}

/// Integers as doubles, inside lists and structs too.
fn widened(t: &DataType) -> DataType {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DataType::Float64,
        DataType::List(f) => DataType::List(Arc::new(
            f.as_ref().clone().with_data_type(widened(f.data_type())),
        )),
        DataType::Struct(fs) => DataType::Struct(Fields::from(
            fs.iter()
                .map(|f| f.as_ref().clone().with_data_type(widened(f.data_type())))
                .collect::<Vec<_>>(),
        )),
        t => t.clone(),
    }
}

fn supported(t: &DataType) -> Result<(), String> {
    match t {
        DataType::Utf8
        | DataType::Int64
        | DataType::Int32
        | DataType::Float64
        | DataType::Float32
        | DataType::Boolean
        | DataType::Date32
        | DataType::Timestamp(TimeUnit::Millisecond, _) => Ok(()),
        DataType::List(f) => supported(f.data_type()),
        DataType::Struct(fs) => fs.iter().try_for_each(|f| supported(f.data_type())),
        other => Err(format!("type {other} is not supported")),
    }
}

/// Whether a JSON value fits the schema (a strict subset of what Arrow's
/// JSON decoder accepts, so a fitting record always decodes); the error
/// names the field and says why.
pub fn fits(value: &serde_json::Value, schema: &Schema) -> Result<(), String> {
    let Some(obj) = value.as_object() else {
        return Err("the value is not a JSON object, and Parquet rows are objects".into());
    };
    fits_fields(obj, schema.fields(), "")
}

fn fits_fields(
    obj: &serde_json::Map<String, serde_json::Value>,
    fields: &Fields,
    parent: &str,
) -> Result<(), String> {
    for f in fields {
        let name = format!("{parent}{}", f.name());
        match obj.get(f.name()) {
            None | Some(serde_json::Value::Null) => {
                if !f.is_nullable() {
                    return Err(format!(
                        "field `{name}` is missing or null, and not nullable"
                    ));
                }
            }
            Some(v) => fits_type(v, f.data_type(), &name)?,
        }
    }
    Ok(())
}

fn fits_type(v: &serde_json::Value, t: &DataType, name: &str) -> Result<(), String> {
    use serde_json::Value as J;
    let ok = match (t, v) {
        (DataType::Utf8, J::String(_)) => true,
        (DataType::Int64, J::Number(n)) => n.as_i64().is_some(),
        (DataType::Int32, J::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        (DataType::Float64 | DataType::Float32, J::Number(_)) => true,
        (DataType::Boolean, J::Bool(_)) => true,
        (DataType::Date32, J::String(s)) => {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
        }
        (DataType::Timestamp(..), J::String(s)) => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        (DataType::Timestamp(..), J::Number(n)) => n.as_i64().is_some(),
        (DataType::List(item), J::Array(items)) => {
            for (i, x) in items.iter().enumerate() {
                if !x.is_null() {
                    fits_type(x, item.data_type(), &format!("{name}[{i}]"))?;
                }
            }
            true
        }
        (DataType::Struct(fields), J::Object(obj)) => {
            fits_fields(obj, fields, &format!("{name}."))?;
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let got = match v {
            J::Null => "null",
            J::Bool(_) => "a boolean",
            J::Number(_) => "a number",
            J::String(_) => "a string",
            J::Array(_) => "an array",
            J::Object(_) => "an object",
        };
        Err(format!("field `{name}` is {got}, not {}", describe(t)))
    }
}

fn describe(t: &DataType) -> String {
    match t {
        DataType::Utf8 => "a string".into(),
        DataType::Int64 => "a 64-bit integer".into(),
        DataType::Int32 => "a 32-bit integer".into(),
        DataType::Float64 | DataType::Float32 => "a number".into(),
        DataType::Boolean => "a boolean".into(),
        DataType::Date32 => "a date (YYYY-MM-DD)".into(),
        DataType::Timestamp(..) => "a timestamp (RFC 3339 or epoch ms)".into(),
        DataType::List(_) => "an array".into(),
        DataType::Struct(_) => "an object".into(),
        other => other.to_string(),
    }
}

/// The encoder of one open object.
pub enum Encoder {
    /// Lines (JSON Lines or raw), compressed on close.
    Lines {
        /// The uncompressed lines.
        buf: Vec<u8>,
        /// How to compress.
        compression: Compression,
    },
    /// Parquet.
    Parquet(Box<ParquetEncoder>),
}

/// Rows decoded to Arrow and written into an in-memory Parquet file.
pub struct ParquetEncoder {
    decoder: arrow_json::reader::Decoder,
    writer: ArrowWriter<Vec<u8>>,
    batch_rows: usize,
}

impl Encoder {
    /// An encoder of lines.
    pub fn lines(compression: Compression) -> Self {
        Encoder::Lines {
            buf: Vec::new(),
            compression,
        }
    }

    /// A Parquet encoder for `schema`.
    pub fn parquet(
        schema: SchemaRef,
        compression: Compression,
        row_group_rows: usize,
    ) -> Result<Self, String> {
        let codec = match compression {
            Compression::Zstd => parquet::basic::Compression::ZSTD(Default::default()),
            Compression::Snappy => parquet::basic::Compression::SNAPPY,
            _ => parquet::basic::Compression::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(row_group_rows))
            .build();
        let batch_rows = row_group_rows.clamp(1, 8192);
        let decoder = arrow_json::ReaderBuilder::new(schema.clone())
            .with_batch_size(batch_rows)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let writer =
            ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(|e| e.to_string())?;
        Ok(Encoder::Parquet(Box::new(ParquetEncoder {
            decoder,
            writer,
            batch_rows,
        })))
    }

    /// Adds one record: a line ending in `\n` for lines, a JSON object that
    /// [`fits`] the schema for Parquet.
    pub fn push(&mut self, line: &[u8]) -> Result<(), String> {
        match self {
            Encoder::Lines { buf, .. } => {
                buf.extend_from_slice(line);
                Ok(())
            }
            Encoder::Parquet(p) => p.push(line),
        }
    }

    /// Bytes the object holds so far (uncompressed lines; encoded Parquet
    /// plus the row group in progress).
    pub fn size(&self) -> usize {
        match self {
            Encoder::Lines { buf, .. } => buf.len(),
            Encoder::Parquet(p) => p.writer.bytes_written() + p.writer.in_progress_size(),
        }
    }

    /// The object's bytes.
    pub fn finish(self) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Lines { buf, compression } => match compression {
                Compression::Gzip => {
                    // flate2 writes a zero mtime and no file name: the
                    // same lines give the same bytes.
                    let mut gz = flate2::write::GzEncoder::new(
                        Vec::with_capacity(buf.len() / 4),
                        flate2::Compression::default(),
                    );
                    gz.write_all(&buf).map_err(|e| e.to_string())?;
                    gz.finish().map_err(|e| e.to_string())
                }
                Compression::Zstd => zstd::bulk::compress(&buf, 3).map_err(|e| e.to_string()),
                _ => Ok(buf),
            },
            Encoder::Parquet(mut p) => {
                p.flush_rows()?;
                p.writer.into_inner().map_err(|e| e.to_string())
            }
        }
    }
}

impl ParquetEncoder {
    fn push(&mut self, mut line: &[u8]) -> Result<(), String> {
        while !line.is_empty() {
            let read = self.decoder.decode(line).map_err(|e| e.to_string())?;
            line = &line[read..];
            if self.decoder.len() >= self.batch_rows {
                self.flush_rows()?;
            } else if read == 0 {
                return Err("the Parquet decoder took nothing".into());
            }
        }
        Ok(())
    }

    fn flush_rows(&mut self) -> Result<(), String> {
        if let Some(batch) = self.decoder.flush().map_err(|e| e.to_string())? {
            self.writer.write(&batch).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, ty: &str, nullable: bool) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            ty: TypeSpec::Name(ty.into()),
            nullable,
        }
    }

    #[test]
    fn records_are_checked_against_the_schema_by_field() {
        let schema = arrow_schema(&[
            spec("id", "int64", false),
            spec("name", "string", true),
            FieldSpec {
                name: "tags".into(),
                ty: TypeSpec::List {
                    list: Box::new(TypeSpec::Name("string".into())),
                },
                nullable: true,
            },
            FieldSpec {
                name: "geo".into(),
                ty: TypeSpec::Struct {
                    fields: vec![spec("lat", "float64", false)],
                },
                nullable: true,
            },
            spec("at", "timestamp", true),
        ])
        .expect("schema");
        let ok = serde_json::json!({"id": 1, "name": "a", "tags": ["x", null], "geo": {"lat": 1}, "at": "2026-01-01T00:00:00Z", "extra": true});
        fits(&ok, &schema).expect("fits");
        for (v, want) in [
            (serde_json::json!({"name": "a"}), "field `id` is missing"),
            (
                serde_json::json!({"id": "1"}),
                "field `id` is a string, not a 64-bit integer",
            ),
            (serde_json::json!({"id": 1.5}), "field `id` is a number"),
            (
                serde_json::json!({"id": 1, "tags": [1]}),
                "field `tags[0]` is a number",
            ),
            (
                serde_json::json!({"id": 1, "geo": {}}),
                "field `geo.lat` is missing",
            ),
            (
                serde_json::json!({"id": 1, "at": "yesterday"}),
                "field `at` is a string, not a timestamp",
            ),
            (serde_json::json!([1]), "not a JSON object"),
        ] {
            let e = fits(&v, &schema).expect_err(&v.to_string());
            assert!(e.contains(want), "{v}: {e}");
        }
        let e = arrow_schema(&[spec("a", "int128", true)]).expect_err("unknown type");
        assert!(e.contains("column `a`: unknown type `int128`"), "{e}");
    }

    #[test]
    fn inferred_numbers_are_doubles_so_a_later_decimal_fits() {
        let first = [
            serde_json::json!({"amount": 12, "geo": {"lat": 1}, "sizes": [1, 2], "name": "a"}),
            serde_json::json!({"amount": 7, "geo": {"lat": 2}, "sizes": [], "name": "b"}),
        ];
        let schema = infer(&first).expect("infer");
        let later =
            serde_json::json!({"amount": 12.5, "geo": {"lat": 1.25}, "sizes": [0.5], "name": "c"});
        fits(&later, &schema).expect("a decimal after whole numbers fits");
        assert_eq!(
            schema
                .field_with_name("amount")
                .expect("amount")
                .data_type(),
            &DataType::Float64
        );
        // What is not a number still does not fit.
        let e = fits(&serde_json::json!({"amount": "12"}), &schema).expect_err("string");
        assert!(e.contains("field `amount` is a string"), "{e}");
    }

    #[test]
    fn parquet_bytes_are_the_same_for_the_same_rows_and_read_back() {
        let schema = Arc::new(
            infer(&[serde_json::json!({"id": 1, "name": "a", "n": null})]).expect("infer"),
        );
        assert_eq!(
            schema.field_with_name("n").expect("n").data_type(),
            &DataType::Utf8
        );
        let encode = || {
            let mut e = Encoder::parquet(schema.clone(), Compression::Zstd, 3).expect("encoder");
            for i in 0..10 {
                e.push(format!("{{\"id\":{i},\"name\":\"r{i}\"}}\n").as_bytes())
                    .expect("push");
            }
            e.finish().expect("finish")
        };
        let a = encode();
        assert_eq!(a, encode(), "deterministic");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(a),
        )
        .expect("reader");
        assert_eq!(
            reader.metadata().num_row_groups(),
            4,
            "row groups of 3 rows"
        );
        let rows: usize = reader
            .build()
            .expect("build")
            .map(|b| b.expect("batch").num_rows())
            .sum();
        assert_eq!(rows, 10);
    }

    #[test]
    fn compressed_lines_are_deterministic_and_decompress() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let encode = || {
                let mut e = Encoder::lines(c);
                e.push(b"{\"a\":1}\n").expect("push");
                e.finish().expect("finish")
            };
            let a = encode();
            assert_eq!(a, encode());
            let plain = match c {
                Compression::Gzip => {
                    let mut out = String::new();
                    std::io::Read::read_to_string(
                        &mut flate2::read::GzDecoder::new(&a[..]),
                        &mut out,
                    )
                    .expect("gunzip");
                    out
                }
                _ => String::from_utf8(zstd::decode_all(&a[..]).expect("unzstd")).expect("utf8"),
            };
            assert_eq!(plain, "{\"a\":1}\n");
        }
    }
}
