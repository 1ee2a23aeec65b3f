use super::*;

const GOOD: &[u8] = b"2026-11-25T14:03:27.512-03:00,0b9a3c4e-6f1d-4e8a-9a51-2d7c1e5f3a10,PLZ-017,3,C0001234,TX-0088231,2,12.50";

#[test]
fn toll_line_parses_into_typed_values() {
    let mut row = Vec::new();
    Schema::toll().parse(GOOD, &mut row).expect("valid");
    let Value::Timestamp(ts) = row[0] else {
        panic!("timestamp")
    };
    assert_eq!(format_timestamp(ts), "2026-11-25T17:03:27.512Z");
    assert_eq!(row[3], Value::Integer(3));
    assert_eq!(row[7], Value::Integer(1250));
}

#[test]
fn each_kind_of_bad_line_gets_a_reason_naming_the_field() {
    let schema = Schema::toll();
    let mut row = Vec::new();
    let reason = |line: &[u8]| schema.parse(line, &mut Vec::new()).expect_err("rejected");
    assert!(reason(b"a,b,c").contains("expected 8"));
    assert!(reason(&GOOD.replace_prefix("2026-11-25T", "2026-13-25T")).starts_with("event_time"));
    let bad_amount = [&GOOD[..GOOD.len() - 5], b"12,5x"].concat();
    assert!(
        reason(&bad_amount).contains("expected 8") || reason(&bad_amount).starts_with("amount")
    );
    let bad_amount = [&GOOD[..GOOD.len() - 5], b"1x.50"].concat();
    assert!(
        reason(&bad_amount).starts_with("amount"),
        "{}",
        reason(&bad_amount)
    );
    let with_nul = String::from_utf8_lossy(GOOD).replace("PLZ-017", "PLZ\0-17");
    assert!(reason(with_nul.as_bytes()).starts_with("booth_id: \"PLZ\\0-17\" contains a NUL"));
    let mut invalid = GOOD.to_vec();
    invalid[60] = 0xff;
    assert!(reason(&invalid).contains("UTF-8"));
    schema.parse(GOOD, &mut row).expect("still fine");
}

#[test]
fn decimals_are_exact() {
    assert_eq!(parse_decimal("12.50", 2), Some(1250));
    assert_eq!(parse_decimal("12.5", 2), Some(1250));
    assert_eq!(parse_decimal("7", 2), Some(700));
    assert_eq!(parse_decimal("-0.05", 2), Some(-5));
    for bad in ["", ".5", "1.", "1.234", "1e3", "abc", "1.-5"] {
        assert_eq!(parse_decimal(bad, 2), None, "{bad}");
    }
}

trait ReplacePrefix {
    fn replace_prefix(&self, from: &str, to: &str) -> Vec<u8>;
}
impl ReplacePrefix for &[u8] {
    fn replace_prefix(&self, from: &str, to: &str) -> Vec<u8> {
        let text = std::str::from_utf8(self).expect("utf8");
        text.replacen(from, to, 1).into_bytes()
    }
}

fn config(yaml: &str) -> Result<Schema, String> {
    let config: SchemaConfig = yaml_serde::from_str(yaml).map_err(|e| e.to_string())?;
    config.build()
}

#[test]
fn a_csv_schema_from_config_parses_every_type_and_quoted_fields() {
    let schema = config(
        "delimiter: ';'\n\
         columns:\n\
         - { name: id, type: integer, min: 1 }\n\
         - { name: note, type: text, optional: true }\n\
         - { name: price, type: decimal, scale: 3, column: price_milli }\n\
         - { name: paid, type: boolean }\n\
         - { name: at, type: timestamp, index: true }\n\
         unique_key: id\n",
    )
    .expect("valid");
    assert_eq!(schema.unique_key, ["id"]);
    assert_eq!(schema.columns[2].column, "price_milli");
    let mut row = Vec::new();
    schema
        .parse(
            b"7;\"a;b \"\"quoted\"\"\";1.5;TRUE;2026-01-01T00:00:00Z",
            &mut row,
        )
        .expect("parses");
    assert_eq!(row[1], Value::Text("a;b \"quoted\"".into()));
    assert_eq!(row[2], Value::Integer(1500));
    assert_eq!(row[3], Value::Boolean(true));
    schema
        .parse(b"8;;0;no;2026-01-01T00:00:00Z", &mut row)
        .expect("an empty optional field is NULL");
    assert_eq!(row[1], Value::Null);
    let reason = schema
        .parse(b"0;x;0;no;2026-01-01T00:00:00Z", &mut row)
        .expect_err("below min");
    assert_eq!(reason, "id: 0 is outside 1..=9223372036854775807");
    let reason = schema
        .parse(b"9;x;0;maybe;2026-01-01T00:00:00Z", &mut row)
        .expect_err("not a boolean");
    assert!(
        reason.starts_with("paid: \"maybe\" is not a boolean"),
        "{reason}"
    );
    let reason = schema.parse(b"9;x;0;1", &mut row).expect_err("short");
    assert_eq!(reason, "expected 5 semicolon-separated fields, found 4");
    let reason = schema
        .parse(b"9;\"open;0;1;2026-01-01T00:00:00Z", &mut row)
        .expect_err("unclosed quote");
    assert!(reason.contains("fields, found 2"), "{reason}");
}

#[test]
fn a_json_schema_reads_fields_by_key_and_keeps_decimals_exact() {
    let schema = config(
        "format: json\n\
         columns:\n\
         - { name: id, type: uuid }\n\
         - { name: amount, type: decimal, scale: 2, column: amount_cents }\n\
         - { name: ok, type: boolean }\n\
         - { name: lane, type: integer, optional: true }\n\
         unique_key: [id]\n",
    )
    .expect("valid");
    let mut row = Vec::new();
    let id = "0B9A3C4E-6F1D-4E8A-9A51-2D7C1E5F3A10";
    let line = format!(r#"{{"amount": 19.99, "id": "{id}", "ok": false, "extra": [1]}}"#);
    schema.parse(line.as_bytes(), &mut row).expect("parses");
    assert_eq!(
        row,
        [
            Value::Text(id.to_lowercase()),
            Value::Integer(1999),
            Value::Boolean(false),
            Value::Null
        ]
    );
    let reason = |line: &str| {
        schema
            .parse(line.as_bytes(), &mut Vec::new())
            .expect_err("bad")
    };
    assert_eq!(reason(r#"{"amount": 1, "ok": true}"#), "id: is missing");
    assert_eq!(reason("[1, 2]"), "line is not a JSON object");
    assert!(reason("{\"id\": ").starts_with("line is not valid JSON"));
    let bad_amount = format!(r#"{{"id": "{id}", "amount": 1.005, "ok": true}}"#);
    assert!(reason(&bad_amount).starts_with("amount: \"1.005\" is not a decimal"));
    let bad_amount = format!(r#"{{"id": "{id}", "amount": 1e3, "ok": true}}"#);
    assert!(reason(&bad_amount).starts_with("amount: \"1e3\""));
    let nested = format!(r#"{{"id": "{id}", "amount": {{"v": 1}}, "ok": true}}"#);
    assert!(reason(&nested).contains("is not a single value"));
}

#[test]
fn bad_schema_configs_say_which_column_and_why() {
    let err = |yaml: &str| config(yaml).expect_err("refused");
    assert!(err("columns: []\n").contains("at least one column"));
    assert!(
        err("columns:\n- { name: Amount, type: text }\n")
            .contains("columns[0] (Amount): \"Amount\" is not a plain SQL identifier")
    );
    assert!(err("columns:\n- { name: a, type: decimal }\n").contains("needs `scale:`"));
    assert!(
        err("format: json\ncolumns:\n- { name: user, type: text }\n").contains(
            "not an SQL keyword such as user or order); name the warehouse column with `column:`"
        )
    );
    config("format: json\ncolumns:\n- { name: user, type: text, column: user_name }\n")
        .expect("a keyword as a JSON key is fine with its own column name");
    assert!(err("columns:\n- { name: a, type: decimal, scale: 19 }\n").contains("at most 18"));
    assert!(
        err("columns:\n- { name: a, type: text, scale: 2 }\n").contains("decimal columns only")
    );
    assert!(err("columns:\n- { name: a, type: integer, min: 3, max: 1 }\n").contains("above max"));
    assert!(err("columns:\n- { name: source, type: text }\n").contains("taken by the loader"));
    assert!(
        err("columns:\n- { name: a, type: text }\n- { name: a, type: text }\n")
            .contains("used twice")
    );
    assert!(
        err("columns:\n- { name: a, type: text }\nunique_key: b\n")
            .contains("not one of the columns")
    );
    assert!(
        err("columns:\n- { name: a, type: text, optional: true }\nunique_key: a\n")
            .contains("is optional")
    );
    assert!(
        err("format: json\ndelimiter: ','\ncolumns:\n- { name: a, type: text }\n")
            .contains("only a csv")
    );
    assert!(err("columns:\n- { name: a, type: float }\n").contains("unknown variant `float`"));
    assert!(
        err("columns:\n- { name: a, type: text, nullable: true }\n")
            .contains("unknown field `nullable`")
    );
}

#[test]
fn the_toll_schema_survives_a_round_trip_through_its_recorded_form() {
    let schema = Schema::toll();
    let json = serde_json::to_string(&schema).expect("serialised");
    let back: Schema = serde_json::from_str(&json).expect("deserialised");
    assert_eq!(back, schema);
    assert_eq!(schema.unique_key, ["transaction_id"]);
    assert!(schema.columns[0].index);
}

#[test]
fn timestamps_outside_years_1_to_9999_are_rejected_alike_by_both_backends() {
    let schema = config("columns:\n- { name: at, type: timestamp }\n").expect("valid");
    let mut row = Vec::new();
    for bad in ["0000-06-01T00:00:00Z", "0001-01-01T00:30:00+01:00"] {
        let reason = schema.parse(bad.as_bytes(), &mut row).expect_err(bad);
        assert!(reason.contains("outside years 1 to 9999"), "{reason}");
    }
    schema
        .parse(b"0001-01-01T00:00:00Z", &mut row)
        .expect("year 1 is fine");
    schema
        .parse(b"9999-12-30T00:00:00Z", &mut row)
        .expect("year 9999 is fine");
}
