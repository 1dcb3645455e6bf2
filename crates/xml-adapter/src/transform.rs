//! Value transforms: the chain that turns the text of an XML node into a sample value (or a
//! label value). Each step either passes a value on, drops the sample on purpose (a sentinel
//! such as `N/A`), or fails with a message naming the offending text.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;

/// A YAML scalar written by the user (`UP: 1`, `on: true`, `state: "ok"`), kept as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl Scalar {
    pub fn to_text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

/// One step as written in the mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformSpec {
    /// Strip surrounding whitespace.
    Trim,
    Lower,
    Upper,
    /// Round towards minus infinity (e.g. epoch seconds without the milliseconds).
    Floor,
    /// `{map: {UP: 1, DOWN: 0, "*": -1}}`: look the text up; `*` is the fallback.
    Map(BTreeMap<String, Scalar>),
    /// `{regex: 'up (\d+) days'}`: the first capture group (or the whole match).
    Regex(String),
    /// `{replace: {from: 'regex', to: '$1'}}`.
    Replace {
        from: String,
        to: String,
    },
    /// Multiply by a factor (`0.001` for milliseconds to seconds); exact when the text is
    /// decimal (`1005` scaled by `0.001` is `1.005`).
    Scale(f64),
    /// Add a constant (e.g. a UTC offset in seconds after `date`).
    Add(f64),
    /// `19968 MiB`, `1.5 GB`, `512k` to bytes (k/M/G/T/P are powers of 1000, Ki/Mi/Gi/Ti/Pi of 1024).
    Bytes,
    /// `0d 1h 3m 2s`, `1h30m`, `250ms`, `01:02:03` to seconds.
    Duration,
    /// `2400 MHz`, `35 C`, `87%`, `1.5 KB/s` to the number before the unit (the unit is not
    /// converted: follow with `scale`).
    Number,
    /// `{unit: MHz}`: like `number`, but the text must end in exactly this unit.
    Unit(String),
    /// `{date: rfc3339}` or a strftime-style format (`%m/%d/%Y %H:%M:%S`) to epoch seconds, UTC
    /// unless the format has `%z`.
    Date(String),
    /// `{skip_if: ["N/A", "-"]}`: these texts mean "no value": the sample is dropped (not an error).
    SkipIf(Vec<String>),
    /// `{nan_if: ["N/A"]}`: these texts mean "unknown": the sample is served as NaN.
    NanIf(Vec<String>),
}

#[derive(Debug, Clone)]
pub enum DateFormat {
    Rfc3339,
    Strf(String),
}

/// A compiled step.
#[derive(Debug, Clone)]
pub enum Transform {
    Trim,
    Lower,
    Upper,
    Floor,
    Map {
        table: BTreeMap<String, String>,
        fallback: Option<String>,
    },
    Regex(Regex),
    Replace(Regex, String),
    Scale(f64),
    Add(f64),
    Bytes,
    Duration,
    Number,
    Unit(String),
    Date(DateFormat),
    SkipIf(Vec<String>),
    NanIf(Vec<String>),
}

/// A value in flight through the chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Num(f64),
}

impl Val {
    fn into_text(self) -> String {
        match self {
            Val::Str(s) => s,
            Val::Num(n) => n.to_string(),
        }
    }
    fn num(&self) -> Result<f64, String> {
        match self {
            Val::Num(n) => Ok(*n),
            Val::Str(s) => parse_number(s),
        }
    }
}

/// Parses a sample value: decimal or scientific notation, `+Inf`, `-Inf`, `NaN`, and integers
/// beyond 2^53 (rounded to the nearest double, as every Prometheus client does).
pub fn parse_number(s: &str) -> Result<f64, String> {
    let t = s.trim();
    // Most values are small unsigned integers: read exactly (15 digits stay below 2^53) without
    // the general float parser.
    if !t.is_empty() && t.len() <= 15 && t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(t.bytes().fold(0u64, |n, b| n * 10 + u64::from(b - b'0')) as f64);
    }
    t.parse::<f64>()
        .map_err(|_| format!("`{}` is not a number", truncate(t)))
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(60).collect();
        format!("{cut}…")
    } else {
        s.to_string()
    }
}

/// Why a transform chain produced no value.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Value(Val),
    /// A sentinel said "no value here": drop the sample quietly.
    Skip,
}

impl TransformSpec {
    pub fn compile(&self) -> Result<Transform, String> {
        Ok(match self {
            TransformSpec::Trim => Transform::Trim,
            TransformSpec::Lower => Transform::Lower,
            TransformSpec::Upper => Transform::Upper,
            TransformSpec::Floor => Transform::Floor,
            TransformSpec::Map(m) => {
                let mut table = BTreeMap::new();
                let mut fallback = None;
                for (k, v) in m {
                    if k == "*" {
                        fallback = Some(v.to_text());
                    } else {
                        table.insert(k.clone(), v.to_text());
                    }
                }
                Transform::Map { table, fallback }
            }
            TransformSpec::Regex(r) => {
                Transform::Regex(Regex::new(r).map_err(|e| format!("bad regex `{r}`: {e}"))?)
            }
            TransformSpec::Replace { from, to } => Transform::Replace(
                Regex::new(from).map_err(|e| format!("bad regex `{from}`: {e}"))?,
                to.clone(),
            ),
            TransformSpec::Scale(f) => Transform::Scale(*f),
            TransformSpec::Add(f) => Transform::Add(*f),
            TransformSpec::Bytes => Transform::Bytes,
            TransformSpec::Duration => Transform::Duration,
            TransformSpec::Number => Transform::Number,
            TransformSpec::Unit(u) => {
                let u = u.trim();
                if u.is_empty() || u.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(format!("unit `{u}` must be a unit name such as `MHz`"));
                }
                Transform::Unit(u.to_string())
            }
            TransformSpec::Date(f) => {
                if f.eq_ignore_ascii_case("rfc3339") || f.eq_ignore_ascii_case("iso8601") {
                    Transform::Date(DateFormat::Rfc3339)
                } else {
                    validate_strf(f)?;
                    Transform::Date(DateFormat::Strf(f.clone()))
                }
            }
            TransformSpec::SkipIf(v) => Transform::SkipIf(v.clone()),
            TransformSpec::NanIf(v) => Transform::NanIf(v.clone()),
        })
    }
}

/// Runs a chain over one value.
pub fn apply_chain(chain: &[Transform], input: &str) -> Result<Outcome, String> {
    let mut v = Val::Str(input.to_string());
    for t in chain {
        v = match t.apply(v)? {
            Outcome::Value(v) => v,
            Outcome::Skip => return Ok(Outcome::Skip),
        };
    }
    Ok(Outcome::Value(v))
}

/// Runs a chain and reads the result as a number.
pub fn apply_numeric(chain: &[Transform], input: &str) -> Result<Option<f64>, String> {
    match apply_chain(chain, input)? {
        Outcome::Skip => Ok(None),
        Outcome::Value(v) => v.num().map(Some),
    }
}

/// How many steps at the start of a chain are `trim`: those need no copy of the text.
pub fn leading_trims(chain: &[Transform]) -> usize {
    chain
        .iter()
        .take_while(|t| matches!(t, Transform::Trim))
        .count()
}

/// [`apply_numeric`] without copying the text when the chain is only `trim`s (the common
/// case: a number read as it is).
pub fn apply_numeric_fast(chain: &[Transform], input: &str) -> Result<Option<f64>, String> {
    let trims = leading_trims(chain);
    let text = if trims > 0 { input.trim() } else { input };
    if trims == chain.len() {
        return parse_number(text).map(Some);
    }
    apply_numeric(&chain[trims..], text)
}

/// Runs a chain and reads the result as text (label values).
pub fn apply_text(chain: &[Transform], input: &str) -> Result<Option<String>, String> {
    match apply_chain(chain, input)? {
        Outcome::Skip => Ok(None),
        Outcome::Value(v) => Ok(Some(v.into_text())),
    }
}

impl Transform {
    fn apply(&self, v: Val) -> Result<Outcome, String> {
        let out = match self {
            Transform::Trim => Val::Str(v.into_text().trim().to_string()),
            Transform::Lower => Val::Str(v.into_text().to_lowercase()),
            Transform::Upper => Val::Str(v.into_text().to_uppercase()),
            Transform::Floor => Val::Num(v.num()?.floor()),
            Transform::Map { table, fallback } => {
                let text = v.into_text();
                match table.get(&text).or(fallback.as_ref()) {
                    Some(m) => Val::Str(m.clone()),
                    None => {
                        return Err(format!(
                            "`{}` is not in the value map (add it, or a \"*\" fallback)",
                            truncate(&text)
                        ));
                    }
                }
            }
            Transform::Regex(r) => {
                let text = v.into_text();
                let caps = r.captures(&text).ok_or_else(|| {
                    format!("`{}` does not match /{}/", truncate(&text), r.as_str())
                })?;
                let m = caps.get(1).or_else(|| caps.get(0));
                Val::Str(m.map_or("", |m| m.as_str()).to_string())
            }
            Transform::Replace(r, to) => {
                Val::Str(r.replace_all(&v.into_text(), to.as_str()).into_owned())
            }
            Transform::Scale(f) => Val::Num(match &v {
                Val::Str(s) => decimal_mul(s, *f).map_or_else(|| v.num().map(|n| n * f), Ok)?,
                Val::Num(n) => n * f,
            }),
            Transform::Add(f) => Val::Num(v.num()? + f),
            Transform::Bytes => Val::Num(parse_bytes(&v.into_text())?),
            Transform::Duration => Val::Num(parse_duration(&v.into_text())?),
            Transform::Number => {
                let text = v.into_text();
                Val::Str(split_number_text(&text)?.0.to_string())
            }
            Transform::Unit(unit) => {
                let text = v.into_text();
                let (n, rest) = split_number_text(&text)?;
                if rest != unit {
                    return Err(format!(
                        "`{}`: expected a number in `{unit}`, found unit `{rest}`",
                        truncate(&text)
                    ));
                }
                Val::Str(n.to_string())
            }
            Transform::Date(fmt) => {
                let text = v.into_text();
                Val::Num(match fmt {
                    DateFormat::Rfc3339 => parse_rfc3339(text.trim())?,
                    DateFormat::Strf(f) => parse_strf(text.trim(), f)?,
                })
            }
            Transform::SkipIf(list) => {
                if let Val::Str(s) = &v
                    && list.iter().any(|x| x == s.trim())
                {
                    return Ok(Outcome::Skip);
                }
                v
            }
            Transform::NanIf(list) => {
                if let Val::Str(s) = &v
                    && list.iter().any(|x| x == s.trim())
                {
                    Val::Num(f64::NAN)
                } else {
                    v
                }
            }
        };
        Ok(Outcome::Value(out))
    }
}

/// The number a text starts with (as text) and the unit after it, both trimmed.
fn split_number_text(s: &str) -> Result<(&str, &str), String> {
    let t = s.trim();
    let end = t
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .map_or(t.len(), |(i, _)| i);
    // `e` may start a unit (`5 EiB`) rather than an exponent: back off until it parses.
    let mut cut = end;
    while cut > 0 {
        if t[..cut].parse::<f64>().is_ok() {
            return Ok((&t[..cut], t[cut..].trim()));
        }
        cut -= 1;
    }
    Err(format!("`{}` does not start with a number", truncate(t)))
}

/// A decimal text as an integer and a power of ten, when it fits.
fn parse_decimal(s: &str) -> Option<(i128, i32)> {
    let t = s.trim();
    let (t, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
        None => (t, 0),
    };
    let (neg, t) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut m: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        m = m.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    let exp = exp.checked_sub(i32::try_from(frac.len()).ok()?)?;
    Some((if neg { -m } else { m }, exp))
}

/// `text * factor` computed in decimal and rounded once, so that `1005 * 0.001` is `1.005`
/// (binary floating point gives `1.0050000000000001`). `None` when the text is not a plain
/// decimal or the digits do not fit.
fn decimal_mul(text: &str, factor: f64) -> Option<f64> {
    if !factor.is_finite() {
        return None;
    }
    let (a, ea) = parse_decimal(text)?;
    // `{:e}` prints the shortest digits that read back as the same factor: `0.001` is `1e-3`.
    let (b, eb) = parse_decimal(&format!("{factor:e}"))?;
    let m = a.checked_mul(b)?;
    format!("{m}e{}", ea.checked_add(eb)?).parse::<f64>().ok()
}

fn split_number_unit(s: &str) -> Result<(f64, &str), String> {
    let (n, unit) = split_number_text(s)?;
    let n = n
        .parse::<f64>()
        .map_err(|_| format!("`{}` does not start with a number", truncate(s)))?;
    Ok((n, unit))
}

/// `19968 MiB` -> 20937965568.
pub fn parse_bytes(s: &str) -> Result<f64, String> {
    let (n, unit) = split_number_unit(s)?;
    let u = unit.trim_end_matches(['B', 'b']);
    let u = if u.len() + 1 == unit.len() || u == unit {
        u
    } else {
        unit
    };
    let factor = match u.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "p" => 1e15,
        "ki" => 1024.0,
        "mi" => 1024f64.powi(2),
        "gi" => 1024f64.powi(3),
        "ti" => 1024f64.powi(4),
        "pi" => 1024f64.powi(5),
        _ => return Err(format!("`{}`: unknown size unit `{unit}`", truncate(s))),
    };
    Ok(n * factor)
}

/// `0d 1h 3m 2s` -> 3782, `01:02:03` -> 3723.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.contains(':') {
        let mut total = 0.0;
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() > 4 {
            return Err(format!("`{}`: too many `:` fields", truncate(t)));
        }
        let weights = [86400.0, 3600.0, 60.0, 1.0];
        for (p, w) in parts.iter().zip(&weights[4 - parts.len()..]) {
            total += p
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("`{}` is not a duration", truncate(t)))?
                * w;
        }
        return Ok(total);
    }
    let mut rest = t;
    let mut total = 0.0;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_end = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
            .map_or(rest.len(), |(i, _)| i);
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("`{}` is not a duration", truncate(t)))?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .char_indices()
            .find(|(_, c)| !c.is_alphabetic())
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let w = match unit {
            "w" => 604800.0,
            "d" => 86400.0,
            "h" => 3600.0,
            "m" | "min" => 60.0,
            "s" | "" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(format!("`{}`: unknown duration unit `{unit}`", truncate(t))),
        };
        total += n * w;
        rest = rest.trim_start_matches([',', ' ']);
    }
    Ok(total)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[derive(Default)]
struct DateParts {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    frac: f64,
    offset_secs: i64,
}

impl DateParts {
    fn epoch(&self, text: &str) -> Result<f64, String> {
        if !(1..=12).contains(&self.month)
            || !(1..=31).contains(&self.day)
            || self.hour > 24
            || self.minute > 59
            || self.second > 60
        {
            return Err(format!("`{}` is not a valid date", truncate(text)));
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let secs =
            days * 86400 + self.hour * 3600 + self.minute * 60 + self.second - self.offset_secs;
        Ok(secs as f64 + self.frac)
    }
}

fn take_digits<'a>(
    s: &'a str,
    max: usize,
    what: &str,
    text: &str,
) -> Result<(i64, &'a str), String> {
    let n = s
        .char_indices()
        .take(max)
        .take_while(|(_, c)| c.is_ascii_digit())
        .count();
    if n == 0 {
        return Err(format!("`{}`: expected {what}", truncate(text)));
    }
    let v = s[..n]
        .parse()
        .map_err(|_| format!("`{}`: bad {what}", truncate(text)))?;
    Ok((v, &s[n..]))
}

fn take_frac(s: &str) -> (f64, &str) {
    let n = s.chars().take_while(char::is_ascii_digit).count();
    if n == 0 {
        return (0.0, s);
    }
    let f = format!("0.{}", &s[..n]).parse().unwrap_or(0.0);
    (f, &s[n..])
}

fn take_offset<'a>(s: &'a str, text: &str) -> Result<(i64, &'a str), String> {
    if let Some(r) = s.strip_prefix(['Z', 'z']) {
        return Ok((0, r));
    }
    let sign = match s.chars().next() {
        Some('+') => 1,
        Some('-') => -1,
        _ => return Err(format!("`{}`: expected a UTC offset", truncate(text))),
    };
    let (h, r) = take_digits(&s[1..], 2, "offset hours", text)?;
    let r = r.strip_prefix(':').unwrap_or(r);
    let (m, r) = take_digits(r, 2, "offset minutes", text).unwrap_or((0, r));
    Ok((sign * (h * 3600 + m * 60), r))
}

/// RFC 3339 / ISO 8601: `2021-07-15T05:11:08.926Z`, `2022-03-17T10:00:00+00:00`.
pub fn parse_rfc3339(text: &str) -> Result<f64, String> {
    parse_strf(text, "%Y-%m-%dT%H:%M:%S%f%z").or_else(|_| {
        // A space instead of `T`, and a missing offset (UTC), are common enough to accept.
        let alt = text.replacen(' ', "T", 1);
        parse_strf(&alt, "%Y-%m-%dT%H:%M:%S%f%z")
            .or_else(|_| parse_strf(&alt, "%Y-%m-%dT%H:%M:%S%f"))
    })
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn validate_strf(fmt: &str) -> Result<(), String> {
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some(
                    'Y' | 'm' | 'd' | 'e' | 'H' | 'M' | 'S' | 'f' | 'z' | 'b' | 'p' | 'I' | 's'
                    | '%',
                ) => {}
                other => {
                    return Err(format!(
                        "date format `{fmt}`: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A strftime subset: %Y %m %d %e %H %I %p %M %S %f (fraction after the seconds, with or
/// without its dot) %z %b %s (epoch seconds) %%.
pub fn parse_strf(text: &str, fmt: &str) -> Result<f64, String> {
    let mut p = DateParts {
        year: 1970,
        month: 1,
        day: 1,
        ..DateParts::default()
    };
    let mut s = text;
    let mut f = fmt.chars();
    let mut pm = None;
    while let Some(c) = f.next() {
        if c != '%' {
            s = s.strip_prefix(c).ok_or_else(|| {
                format!(
                    "`{}` does not match the date format `{fmt}`",
                    truncate(text)
                )
            })?;
            continue;
        }
        let d = f.next().unwrap_or('%');
        match d {
            'Y' => {
                let neg = s.starts_with('-');
                let (v, r) = take_digits(s.trim_start_matches('-'), 4, "year", text)?;
                p.year = if neg { -v } else { v };
                s = r;
            }
            'm' => (p.month, s) = take_digits(s, 2, "month", text)?,
            'd' => (p.day, s) = take_digits(s, 2, "day", text)?,
            'e' => (p.day, s) = take_digits(s.trim_start(), 2, "day", text)?,
            'H' | 'I' => (p.hour, s) = take_digits(s, 2, "hour", text)?,
            'M' => (p.minute, s) = take_digits(s, 2, "minute", text)?,
            'S' => (p.second, s) = take_digits(s, 2, "second", text)?,
            'f' => {
                let r = s.strip_prefix(['.', ',']).unwrap_or(s);
                if r.len() != s.len() || r.starts_with(|c: char| c.is_ascii_digit()) {
                    (p.frac, s) = take_frac(r);
                }
            }
            'z' => (p.offset_secs, s) = take_offset(s, text)?,
            'b' => {
                let lower = s.get(..3).map(str::to_ascii_lowercase).unwrap_or_default();
                let idx = MONTHS
                    .iter()
                    .position(|m| *m == lower)
                    .ok_or_else(|| format!("`{}`: expected a month name", truncate(text)))?;
                p.month = idx as i64 + 1;
                s = &s[3..];
                // Full month names ("March") are accepted too.
                s = s.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            }
            'p' => {
                let up = s.get(..2).map(str::to_ascii_uppercase).unwrap_or_default();
                pm = match up.as_str() {
                    "AM" => Some(false),
                    "PM" => Some(true),
                    _ => return Err(format!("`{}`: expected AM or PM", truncate(text))),
                };
                s = &s[2..];
            }
            's' => {
                let (n, r) = split_number_unit(s)?;
                if !r.is_empty() {
                    return Err(format!(
                        "`{}`: trailing text after epoch seconds",
                        truncate(text)
                    ));
                }
                return Ok(n);
            }
            _ => {
                s = s
                    .strip_prefix('%')
                    .ok_or_else(|| format!("`{}` does not match `{fmt}`", truncate(text)))?
            }
        }
    }
    if !s.is_empty() {
        return Err(format!(
            "`{}`: unexpected `{}` after the date (format `{fmt}`)",
            truncate(text),
            truncate(s)
        ));
    }
    match pm {
        Some(true) if p.hour < 12 => p.hour += 12,
        Some(false) if p.hour == 12 => p.hour = 0,
        _ => {}
    }
    p.epoch(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(specs: &[TransformSpec]) -> Vec<Transform> {
        specs.iter().map(|s| s.compile().unwrap()).collect()
    }

    #[test]
    fn scale_is_exact_on_decimal_text() {
        let chain = [TransformSpec::Scale(0.001).compile().unwrap()];
        assert_eq!(apply_numeric(&chain, "1005").unwrap(), Some(1.005));
        assert_eq!(apply_numeric(&chain, "-2.5e3").unwrap(), Some(-2.5));
        assert_eq!(apply_numeric(&chain, " 7 ").unwrap(), Some(0.007));
        let third = [TransformSpec::Scale(0.1).compile().unwrap()];
        assert_eq!(apply_numeric(&third, "3").unwrap(), Some(0.3));
        // Not decimal text: the float product.
        assert_eq!(apply_numeric(&chain, "+Inf").unwrap(), Some(f64::INFINITY));
    }

    #[test]
    fn units_without_a_regex() {
        let number = [TransformSpec::Number.compile().unwrap()];
        for (text, want) in [
            ("2400 MHz", 2400.0),
            ("35 C", 35.0),
            ("87%", 87.0),
            ("1.5 KB/s", 1.5),
            ("12W", 12.0),
            ("-3.25 dBm", -3.25),
            ("42", 42.0),
        ] {
            assert_eq!(apply_numeric(&number, text).unwrap(), Some(want), "{text}");
        }
        assert!(
            apply_numeric(&number, "MHz")
                .unwrap_err()
                .contains("does not start")
        );
        let mhz = [
            TransformSpec::Unit("MHz".into()).compile().unwrap(),
            TransformSpec::Scale(1e6).compile().unwrap(),
        ];
        assert_eq!(
            apply_numeric(&mhz, "2400.5 MHz").unwrap(),
            Some(2_400_500_000.0)
        );
        let e = apply_numeric(&mhz, "2.4 GHz").unwrap_err();
        assert!(
            e.contains("expected a number in `MHz`, found unit `GHz`"),
            "{e}"
        );
        let kbs = [
            TransformSpec::Unit("KB/s".into()).compile().unwrap(),
            TransformSpec::Scale(1000.0).compile().unwrap(),
        ];
        assert_eq!(apply_numeric(&kbs, "1.5 KB/s").unwrap(), Some(1500.0));
        assert!(TransformSpec::Unit("".into()).compile().is_err());
    }

    #[test]
    fn trim_and_map_turn_states_into_numbers() {
        let c = chain(&[
            TransformSpec::Trim,
            TransformSpec::Map(BTreeMap::from([
                ("UP".to_string(), Scalar::Int(1)),
                ("DOWN".to_string(), Scalar::Int(0)),
            ])),
        ]);
        assert_eq!(apply_numeric(&c, "  UP\n").unwrap(), Some(1.0));
        assert_eq!(apply_numeric(&c, "DOWN").unwrap(), Some(0.0));
        let e = apply_numeric(&c, "SIDEWAYS").unwrap_err();
        assert!(e.contains("SIDEWAYS"), "{e}");
    }

    #[test]
    fn map_fallback() {
        let c = chain(&[TransformSpec::Map(BTreeMap::from([
            ("a".to_string(), Scalar::Str("x".into())),
            ("*".to_string(), Scalar::Float(-1.5)),
        ]))]);
        assert_eq!(apply_numeric(&c, "zzz").unwrap(), Some(-1.5));
    }

    #[test]
    fn regex_scale_and_floor() {
        let c = chain(&[
            TransformSpec::Regex(r"took (\d+) ms".into()),
            TransformSpec::Scale(0.001),
        ]);
        assert_eq!(apply_numeric(&c, "it took 250 ms").unwrap(), Some(0.25));
        assert!(
            apply_numeric(&c, "never")
                .unwrap_err()
                .contains("does not match")
        );
        let f = chain(&[TransformSpec::Floor]);
        assert_eq!(apply_numeric(&f, "1.9").unwrap(), Some(1.0));
    }

    #[test]
    fn units() {
        assert_eq!(parse_bytes("19968 MiB").unwrap(), 19968.0 * 1048576.0);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1.5e9);
        assert_eq!(parse_bytes("512k").unwrap(), 512000.0);
        assert_eq!(parse_bytes("42").unwrap(), 42.0);
        assert_eq!(parse_bytes("2 KiB").unwrap(), 2048.0);
        assert!(parse_bytes("3 furlongs").unwrap_err().contains("furlongs"));
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0d 1h 3m 2s").unwrap(), 3782.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("250ms").unwrap(), 0.25);
        assert_eq!(parse_duration("01:02:03").unwrap(), 3723.0);
        assert_eq!(parse_duration("2:03").unwrap(), 123.0);
        assert_eq!(parse_duration("90").unwrap(), 90.0);
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_rfc3339("2021-07-15T05:11:08.926Z").unwrap(),
            1626325868.926
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0.0);
        assert_eq!(
            parse_rfc3339("2022-03-17T10:00:00+01:00").unwrap(),
            1647507600.0
        );
        assert_eq!(parse_rfc3339("2000-02-29 12:00:00").unwrap(), 951825600.0);
        assert_eq!(
            parse_strf("12/22/2018 21:55:37", "%m/%d/%Y %H:%M:%S").unwrap(),
            1545515737.0
        );
        assert_eq!(
            parse_strf("Mar 4 2021 1:05 PM", "%b %e %Y %I:%M %p").unwrap(),
            1614863100.0
        );
        assert!(parse_strf("13/45/2018 21:55:37", "%m/%d/%Y %H:%M:%S").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(validate_strf("%Q").is_err());
    }

    #[test]
    fn sentinels_skip_or_nan() {
        let c = chain(&[
            TransformSpec::Trim,
            TransformSpec::SkipIf(vec!["-".into()]),
            TransformSpec::NanIf(vec!["N/A".into()]),
        ]);
        assert_eq!(apply_chain(&c, " - ").unwrap(), Outcome::Skip);
        assert!(apply_numeric(&c, "N/A").unwrap().unwrap().is_nan());
        assert_eq!(apply_numeric(&c, "7").unwrap(), Some(7.0));
    }

    #[test]
    fn numbers_beyond_2_pow_53_and_specials() {
        assert_eq!(
            parse_number("18446744073709551603").unwrap(),
            18446744073709551603u64 as f64
        );
        assert_eq!(parse_number("+Inf").unwrap(), f64::INFINITY);
        assert!(parse_number("NaN").unwrap().is_nan());
        assert!(parse_number("12abc").unwrap_err().contains("12abc"));
    }
}
