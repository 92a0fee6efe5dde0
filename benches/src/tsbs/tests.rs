use std::collections::{HashMap, HashSet};

use super::*;

fn config(trucks: u64, duration: &str, seed: u64) -> IotConfig {
    IotConfig::new(trucks, parse_duration(duration).unwrap(), seed).unwrap()
}

fn generate(cfg: &IotConfig) -> (Vec<u8>, GenStats) {
    let mut gen = cfg.generator();
    let mut out = Vec::new();
    while gen.next_line(&mut out) {}
    (out, gen.stats())
}

/// A parsed line: measurement, tags, fields (value kept as text), timestamp.
struct Line<'a> {
    measurement: &'a str,
    tags: Vec<(&'a str, &'a str)>,
    fields: Vec<(&'a str, &'a str)>,
    ts: i64,
}

/// Deliberately simple line-protocol check: our lines have no escapes and no spaces in keys,
/// so a line is `series fields timestamp`; every field value is a float or an `i` integer.
fn parse(line: &str) -> Line<'_> {
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 3, "not `series fields ts`: {line}");
    let mut series = parts[0].split(',');
    let measurement = series.next().unwrap();
    let tags = series
        .map(|kv| {
            kv.split_once('=')
                .unwrap_or_else(|| panic!("bad tag {kv:?} in {line}"))
        })
        .collect::<Vec<_>>();
    let fields = parts[1]
        .split(',')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("bad field in {line}"));
            match v.strip_suffix('i') {
                Some(int) => assert!(int.parse::<i64>().is_ok(), "bad integer {v} in {line}"),
                None => assert!(v.parse::<f64>().unwrap().is_finite(), "bad float in {line}"),
            }
            (k, v)
        })
        .collect::<Vec<_>>();
    let ts = parts[2]
        .parse()
        .unwrap_or_else(|_| panic!("bad timestamp in {line}"));
    Line {
        measurement,
        tags,
        fields,
        ts,
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (a, _) = generate(&config(20, "30m", 42));
    let (b, _) = generate(&config(20, "30m", 42));
    let (c, _) = generate(&config(20, "30m", 43));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Batching does not change the stream.
    let batched: Vec<u8> = config(20, "30m", 42)
        .batches(777)
        .flat_map(|b| b.body)
        .collect();
    assert_eq!(a, batched);
}

#[test]
fn trucks_do_not_depend_on_fleet_size() {
    let mut small = config(3, "10m", 5);
    let mut large = config(50, "10m", 5);
    small.irregularities = Irregularities::NONE;
    large.irregularities = Irregularities::NONE;
    let (s, _) = generate(&small);
    let (l, _) = generate(&large);
    let first = |buf: &[u8]| {
        String::from_utf8(buf.to_vec())
            .unwrap()
            .lines()
            .filter(|l| l.contains("name=truck_2,"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(first(&s), first(&l));
}

#[test]
fn regular_stream_has_exact_rows_in_order() {
    let mut cfg = config(7, "1h", 1);
    cfg.irregularities = Irregularities::NONE;
    assert_eq!(cfg.steps, 360);
    let (out, stats) = generate(&cfg);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, 7 * 360 * 2);
    assert_eq!(stats.entries, 7 * 360 * 2);
    assert_eq!(stats.emitted, stats.entries);
    for (i, line) in lines.iter().enumerate() {
        let l = parse(line);
        let step = i as i64 / 14;
        assert_eq!(l.ts, START_DEFAULT_NS + step * 10_000_000_000);
        let (measurement, fields) = if i % 2 == 0 {
            ("readings", 7)
        } else {
            ("diagnostics", 3)
        };
        assert_eq!(l.measurement, measurement);
        assert_eq!(l.fields.len(), fields);
        assert_eq!(l.tags.len(), 8);
        assert_eq!(
            l.tags[0],
            ("name", format!("truck_{}", (i / 2) % 7).as_str())
        );
    }
}

#[test]
fn tsbs_stream_parses_and_has_expected_irregularities() {
    let cfg = config(50, "2h", 9);
    let (out, stats) = generate(&cfg);
    let text = String::from_utf8(out).unwrap();
    let entries = 50 * 720 * 2;
    assert_eq!(stats.entries, entries);
    assert_eq!(stats.emitted, entries - stats.missing);
    assert_eq!(text.lines().count() as u64, stats.emitted);

    let frac = |n: u64, of: u64| n as f64 / of as f64;
    // 1 % of groups plus 10 % of the remaining lines: ~10.9 %.
    let missing = frac(stats.missing, entries);
    assert!((0.095..0.125).contains(&missing), "missing {missing}");
    let late = frac(stats.late, stats.emitted);
    assert!((0.04..0.06).contains(&late), "late {late}");
    let null = frac(stats.null_fields, stats.emitted);
    assert!((0.09..0.11).contains(&null), "null {null}");
    let cleared = frac(stats.cleared_tags, stats.emitted);
    assert!((0.007..0.013).contains(&cleared), "cleared {cleared}");

    let (mut null_seen, mut cleared_seen, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut newest = i64::MIN;
    let end = START_DEFAULT_NS + 720 * 10_000_000_000;
    for line in text.lines() {
        let l = parse(line);
        assert!((START_DEFAULT_NS..end).contains(&l.ts));
        let full = match l.measurement {
            "readings" => 7,
            "diagnostics" => 3,
            m => panic!("unexpected measurement {m}"),
        };
        assert!(
            l.fields.len() == full || l.fields.len() == full - 1,
            "{line}"
        );
        null_seen += u64::from(l.fields.len() < full);
        assert!(l.tags.len() == 8 || l.tags.len() == 7, "{line}");
        cleared_seen += u64::from(l.tags.len() < 8);
        // A late line is at most DELAY_STEPS_MAX steps behind the newest line so far.
        assert!(
            l.ts >= newest.saturating_sub(DELAY_STEPS_MAX as i64 * 10_000_000_000),
            "{line}"
        );
        newest = newest.max(l.ts);
        // `name` is never cleared, so no two lines share a series and a time (InfluxDB
        // would keep only one of them).
        let &(_, name) = l
            .tags
            .iter()
            .find(|(k, _)| *k == "name")
            .unwrap_or_else(|| panic!("no name: {line}"));
        assert!(
            seen.insert((l.measurement, name, l.ts)),
            "series and time twice: {line}"
        );
        let key = (l.measurement.to_owned(), name.to_owned());
        let prev = last.entry(key).or_insert(i64::MIN);
        if l.ts < *prev {
            out_of_order += 1;
        }
        *prev = (*prev).max(l.ts);
    }
    assert_eq!(null_seen, stats.null_fields);
    assert_eq!(cleared_seen, stats.cleared_tags);
    // Most late lines land after a newer line of their series (not when that one is missing
    // or late too, or the line was one of the last steps').
    let ooo = frac(out_of_order, stats.emitted);
    assert!((0.03..0.06).contains(&ooo), "out of order {ooo}");
    assert!(out_of_order <= stats.late);
}

#[test]
fn late_lines_survive_the_end_of_the_run() {
    let mut cfg = config(5, "1m", 3);
    cfg.irregularities = Irregularities {
        late_line: 1.0,
        ..Irregularities::NONE
    };
    let (out, stats) = generate(&cfg);
    assert_eq!(stats.late, 5 * 6 * 2);
    assert_eq!(stats.emitted, stats.entries);
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 60);
}

#[test]
fn batches_hold_whole_lines() {
    let cfg = config(10, "10m", 4);
    let batches: Vec<LineBatch> = cfg.batches(100).collect();
    assert!(batches[..batches.len() - 1].iter().all(|b| b.lines == 100));
    for b in &batches {
        assert_eq!(b.body.iter().filter(|&&c| c == b'\n').count(), b.lines);
        assert_eq!(b.body.last(), Some(&b'\n'));
    }
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    for bad in ["", "h", "10", "5x", "0s", "1.5h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn scale_is_checked() {
    assert!(matches!(
        IotConfig::new(0, Duration::from_secs(60), 1),
        Err(GenError::Trucks(0))
    ));
    assert!(matches!(
        IotConfig::new(1, Duration::from_secs(5), 1),
        Err(GenError::TooShort(..))
    ));
    assert!(matches!(
        IotConfig::new(1_000_000, Duration::from_secs(365 * 86_400), 1),
        Err(GenError::TooLarge(_))
    ));
}
