//! The lake's Parquet schema (configured, kept in the lake, or inferred
//! from the first records) and each record encoded against it.

use super::*;

impl Inner {
    /// The Parquet schema: configured, kept in the lake, or inferred from
    /// `sample` and kept there (create-if-absent: another host's wins).
    pub(super) async fn schema(
        &self,
        sample: &[serde_json::Value],
    ) -> Result<SchemaRef, SinkError> {
        self.schema
            .get_or_try_init(|| async {
                let key = self.writer.schema_key();
                let location = object_store::path::Path::from(key.as_str());
                let parse = |bytes: &[u8]| -> Result<SchemaRef, SinkError> {
                    serde_json::from_slice::<arrow_schema::Schema>(bytes)
                        .map(Arc::new)
                        .map_err(|e| SinkError::Config {
                            sink: self.writer.describe.clone(),
                            message: format!("`{key}` is not an Arrow schema: {e}"),
                        })
                };
                match self.writer.store.get(&location).await {
                    Ok(got) => {
                        let bytes = got.bytes().await.map_err(|e| {
                            self.store_error((format!("cannot read `{key}`: {e}"), true))
                        })?;
                        return parse(&bytes);
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(self.store_error((
                            format!("cannot read `{key}`: {e}"),
                            segment::transient(&e),
                        )));
                    }
                }
                let schema = encode::infer(sample).map_err(|e| SinkError::Config {
                    sink: self.writer.describe.clone(),
                    message: format!(
                        "cannot infer a Parquet schema from the first records ({e}); give `schema`"
                    ),
                })?;
                let body = serde_json::to_vec_pretty(&schema).map_err(|e| SinkError::Config {
                    sink: self.writer.describe.clone(),
                    message: e.to_string(),
                })?;
                match self
                    .writer
                    .create(&key, bytes::Bytes::from(body))
                    .await
                    .map_err(|e| self.store_error(e))?
                {
                    None => {
                        tracing::info!(sink = %self.writer.describe, key = %key, columns = schema.fields().len(),
                            "inferred the Parquet schema from the first records and kept it in the lake");
                        Ok(Arc::new(schema))
                    }
                    Some(theirs) => parse(&theirs),
                }
            })
            .await
            .cloned()
    }

    /// Encodes one record; `Err` is the reason it is refused.
    pub(super) fn encode(
        &self,
        record: &Record,
        source: &Partition,
        schema: Option<&arrow_schema::Schema>,
    ) -> Result<(String, Vec<u8>), String> {
        let cfg = &self.config;
        let needs_value = self.template.reads_value()
            || cfg.event_time.field.is_some()
            || cfg.format == LakeFormat::Parquet;
        let value: Option<serde_json::Value> = if needs_value {
            record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice(v).ok())
        } else {
            None
        };
        let mut line = Vec::with_capacity(record.size() + 1);
        match cfg.format {
            LakeFormat::Jsonl => crate::sink::encode_line(record, cfg.record, &mut line)?,
            LakeFormat::Raw => {
                let Some(v) = record.value.as_deref() else {
                    return Err("record has no value, and a raw lake writes values".into());
                };
                if v.contains(&b'\n') {
                    return Err(
                        "record value holds a newline, and a raw lake writes one value per line"
                            .into(),
                    );
                }
                line.extend_from_slice(v);
                line.push(b'\n');
            }
            LakeFormat::Parquet => {
                let Some(v) = &value else {
                    return Err(if record.value.is_none() {
                        "record has no value, and Parquet rows are JSON objects".into()
                    } else {
                        "record value is not JSON, and Parquet rows are JSON objects".into()
                    });
                };
                if let Some(schema) = schema {
                    encode::fits(v, schema)?;
                }
                serde_json::to_writer(&mut line, v).map_err(|e| e.to_string())?;
                line.push(b'\n');
            }
        }
        let time = if self.template.reads_event_time() {
            layout::event_time(&cfg.event_time, &self.event_path, record, value.as_ref())
        } else {
            None
        };
        let path = self
            .template
            .render(source, time, value.as_ref(), &cfg.default_partition);
        Ok((path, line))
    }

    pub(super) fn new_encoder(&self) -> Result<Encoder, String> {
        match self.config.format {
            LakeFormat::Parquet => {
                let schema = self.schema.get().cloned().ok_or("no Parquet schema yet")?;
                Encoder::parquet(
                    schema,
                    self.config.compression(),
                    self.config.row_group_rows,
                )
            }
            _ => Ok(Encoder::lines(self.config.compression())),
        }
    }
}
