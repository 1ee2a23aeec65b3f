//! AWS Signature Version 4, the verifying side: parse the `Authorization` header, rebuild
//! the canonical request from what arrived, derive the signing key from the configured
//! secret and compare signatures in constant time.
//!
//! Only the header form is served (`Authorization: AWS4-HMAC-SHA256 Credential=…,
//! SignedHeaders=…, Signature=…` with an `X-Amz-Date` header), which is what every AWS SDK,
//! the AWS CLI, Fluent Bit and Vector send; presigned URLs (`X-Amz-Algorithm` in the query)
//! are refused as unauthenticated.
//!
//! The steps follow AWS's published description; the unit tests run AWS's own test-suite
//! vectors (`aws-sig-v4-test-suite`) through them.

use ring::{digest, hmac};

/// The one algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The last element of every credential scope.
const TERMINATOR: &str = "aws4_request";

/// Why a request's signature could not be checked or did not match, each the kind of
/// refusal AWS answers with (see [`super::api::AwsError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Authorization` header at all.
    #[error("Missing Authentication Token")]
    Missing,
    /// A header that is not a well-formed SigV4 authorization.
    #[error("{0}")]
    Incomplete(String),
    /// Well-formed, but wrong: scope, date or signature.
    #[error("{0}")]
    Invalid(String),
}

/// The parts of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// Region of the scope.
    pub region: String,
    /// Service of the scope.
    pub service: String,
    /// The lowercase header names the client signed, as listed.
    pub signed_headers: Vec<String>,
    /// The signature, lowercase hex.
    pub signature: String,
}

impl Authorization {
    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/{TERMINATOR}",
            self.date, self.region, self.service
        )
    }
}

/// Parses `AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`.
///
/// # Errors
/// [`SigError::Incomplete`] naming what is missing or malformed.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let incomplete = |m: &str| SigError::Incomplete(m.to_owned());
    let value = value.trim();
    let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(SigError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'; only {ALGORITHM} (Signature Version 4) \
             is accepted"
        )));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    for (name, part) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed),
    ] {
        if part.is_none_or(str::is_empty) {
            missing.push(format!("Authorization header requires '{name}' parameter."));
        }
    }
    if !missing.is_empty() {
        return Err(SigError::Incomplete(missing.join(" ")));
    }
    let (credential, signed, signature) = (
        credential.unwrap_or_default(),
        signed.unwrap_or_default(),
        signature.unwrap_or_default(),
    );
    let parts: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, terminator] = parts[..] else {
        return Err(SigError::Incomplete(format!(
            "Credential '{credential}' is not KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    };
    if key.is_empty() || region.is_empty() || service.is_empty() {
        return Err(incomplete(
            "Credential must name an access key id, a region and a service",
        ));
    }
    if terminator != TERMINATOR {
        return Err(incomplete(
            "Credential should be scoped with a valid terminator: 'aws4_request'",
        ));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigError::Incomplete(format!(
            "Credential date '{date}' is not YYYYMMDD"
        )));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete("Signature must be 64 hexadecimal digits"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_ascii_lowercase).collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err(incomplete("SignedHeaders has an empty header name"));
    }
    Ok(Authorization {
        access_key_id: key.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// What the canonical request is made of: the request as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as sent (percent-encoded as on the wire).
    pub path: &'a str,
    /// The query string as sent, without `?`.
    pub query: &'a str,
    /// Every header, in arrival order (several with one name allowed).
    pub headers: &'a [(String, Vec<u8>)],
    /// SHA-256 of the body.
    pub payload: &'a [u8],
}

/// The canonical request for `signed_headers` (lowercase names).
///
/// # Errors
/// [`SigError::Invalid`] when a signed header is not in the request.
pub fn canonical_request(
    request: &RequestParts<'_>,
    signed_headers: &[String],
) -> Result<String, SigError> {
    let mut names: Vec<&str> = signed_headers.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::with_capacity(256);
    out.push_str(request.method);
    out.push('\n');
    out.push_str(&canonical_uri(request.path));
    out.push('\n');
    out.push_str(&canonical_query(request.query));
    out.push('\n');
    for name in &names {
        let values: Vec<String> = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| trim_all(v))
            .collect();
        if values.is_empty() {
            return Err(SigError::Invalid(format!(
                "The request signature names header '{name}' in SignedHeaders, but the request \
                 does not carry it"
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&names.join(";"));
    out.push('\n');
    out.push_str(&hex(
        digest::digest(&digest::SHA256, request.payload).as_ref()
    ));
    Ok(out)
}

/// `AWS4-HMAC-SHA256\n<amz date>\n<scope>\n<hex sha256 of the canonical request>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    )
}

/// The key that signs requests of one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut key = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes()),
        date.as_bytes(),
    );
    for part in [region, service, TERMINATOR] {
        key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.as_ref()),
            part.as_bytes(),
        );
    }
    hmac::Key::new(hmac::HMAC_SHA256, key.as_ref())
}

/// The signature of `string_to_sign`, lowercase hex.
pub fn signature(key: &hmac::Key, string_to_sign: &str) -> String {
    hex(hmac::sign(key, string_to_sign.as_bytes()).as_ref())
}

/// Whether `presented` is `expected`, in time that does not depend on where they differ.
pub fn signatures_match(expected: &str, presented: &str) -> bool {
    constant_time_eq::constant_time_eq(expected.as_bytes(), presented.as_bytes())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The path with `.` and `..` segments resolved and empty segments dropped, each segment
/// then percent-encoded once more (SigV4 for services other than S3 encodes the path as
/// sent, so `%20` on the wire is `%2520` here).
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| encode(s.as_bytes()))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if !segments.is_empty() && path.ends_with('/') {
        out.push('/');
    }
    out
}

/// The query's parameters decoded, encoded the canonical way and sorted by name, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k)), encode(&decode(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding: everything but `A-Z a-z 0-9 - _ . ~` as `%XX`.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes `%XX`; a `%` not followed by two hex digits stays as it is.
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| bytes.get(j).and_then(|&c| char::from(c).to_digit(16));
        match (bytes[i], hex_at(i + 1), hex_at(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits make at most 255.
                out.push(u8::try_from(h * 16 + l).unwrap_or(u8::MAX));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A header value trimmed, with runs of spaces inside collapsed to one.
fn trim_all(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    /// Runs one vector of AWS's SigV4 test suite: the request (method, path with query,
    /// extra headers, body) must give `expected` as signature.
    fn vector(
        method: &str,
        target: &str,
        extra: &[(&str, &str)],
        body: &str,
        signed: &str,
        expected: &str,
    ) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = vec![
            ("Host".to_owned(), b"example.amazonaws.com".to_vec()),
            ("X-Amz-Date".to_owned(), DATE.as_bytes().to_vec()),
        ];
        headers.extend(
            extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
        );
        let signed: Vec<String> = signed.split(';').map(str::to_owned).collect();
        let parts = RequestParts {
            method,
            path,
            query,
            headers: &headers,
            payload: body.as_bytes(),
        };
        let creq = canonical_request(&parts, &signed).expect("canonical request");
        let sts = string_to_sign(DATE, "20150830/us-east-1/service/aws4_request", &creq);
        let key = signing_key(SECRET, "20150830", "us-east-1", "service");
        assert_eq!(signature(&key, &sts), expected, "{method} {target}\n{creq}");
    }

    #[test]
    fn aws_test_suite_vanilla_requests() {
        let signed = "host;x-amz-date";
        let vanilla = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        vector("GET", "/", &[], "", signed, vanilla);
        vector(
            "POST",
            "/",
            &[],
            "",
            signed,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        );
        vector(
            "POST",
            "/?Param1=value1",
            &[],
            "",
            signed,
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        );
        vector(
            "GET",
            "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            &[],
            "",
            signed,
            "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        );
    }

    #[test]
    fn aws_test_suite_query_ordering() {
        let signed = "host;x-amz-date";
        vector(
            "GET",
            "/?Param1=value2&Param1=Value1",
            &[],
            "",
            signed,
            "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
        );
        vector(
            "GET",
            "/?Param2=value2&Param1=value1",
            &[],
            "",
            signed,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        );
        vector(
            "GET",
            "/?Param1=value2&Param1=value1",
            &[],
            "",
            signed,
            "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694",
        );
    }

    #[test]
    fn aws_test_suite_header_canonicalisation() {
        vector(
            "GET",
            "/",
            &[
                ("My-Header1", "value4"),
                ("My-Header1", "value1"),
                ("My-Header1", "value3"),
                ("My-Header1", "value2"),
            ],
            "",
            "host;my-header1;x-amz-date",
            "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
        );
        vector(
            "GET",
            "/",
            &[
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
            ],
            "",
            "host;my-header1;x-amz-date",
            "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        );
        vector(
            "GET",
            "/",
            &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            "",
            "host;my-header1;my-header2;x-amz-date",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        );
        vector(
            "POST",
            "/",
            &[("My-Header1", "VALUE1")],
            "",
            "host;my-header1;x-amz-date",
            "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
        );
    }

    #[test]
    fn aws_test_suite_path_normalisation() {
        let signed = "host;x-amz-date";
        let root = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        for path in ["/example1/example2/../..", "/example/..", "//", "/./"] {
            vector("GET", path, &[], "", signed, root);
        }
        vector(
            "GET",
            "/./example",
            &[],
            "",
            signed,
            "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5",
        );
        vector(
            "GET",
            "//example//",
            &[],
            "",
            signed,
            "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
        );
        vector(
            "GET",
            "/example space/",
            &[],
            "",
            signed,
            "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
        );
    }

    #[test]
    fn aws_test_suite_session_token_and_body() {
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        vector(
            "POST",
            "/",
            &[("X-Amz-Security-Token", token)],
            "",
            "host;x-amz-date;x-amz-security-token",
            "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
        );
        vector(
            "POST",
            "/",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            "Param1=value1",
            "content-type;host;x-amz-date",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        );
    }

    #[test]
    fn authorization_headers_parse_or_say_what_is_missing() {
        let parsed = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/firehose/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .expect("parses");
        assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
        assert_eq!(parsed.scope(), "20150830/us-east-1/firehose/aws4_request");
        assert_eq!(
            parsed.signed_headers,
            ["content-type", "host", "x-amz-date"]
        );
        let SigError::Incomplete(message) = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/firehose/aws4_request",
        )
        .expect_err("incomplete") else {
            panic!("incomplete")
        };
        assert!(message.contains("'Signature'"), "{message}");
        assert!(message.contains("'SignedHeaders'"), "{message}");
        assert!(matches!(
            parse_authorization("Bearer abc"),
            Err(SigError::Incomplete(m)) if m.contains("algorithm")
        ));
        assert!(matches!(
            parse_authorization(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/firehose/aws5_request, \
                 SignedHeaders=host, Signature=00"
            ),
            Err(SigError::Incomplete(m)) if m.contains("terminator")
        ));
    }

    #[test]
    fn signatures_compare_whole() {
        assert!(signatures_match("abc", "abc"));
        assert!(!signatures_match("abc", "abd"));
        assert!(!signatures_match("abc", "ab"));
    }
}
