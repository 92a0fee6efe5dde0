//! TSBS `iot` workload: a fleet of trucks writing `readings` and `diagnostics` every 10 s.
//!
//! The stream is the one TSBS's `tsbs_generate_data --use-case=iot --format=influx` produces, in
//! shape: for every time step, for every truck, one `readings` line then one `diagnostics`
//! line (the two tables interleaved), nanosecond timestamps, tags in TSBS's order. Sample:
//!
//! ```text
//! readings,name=truck_0,fleet=South,driver=Trish,model=H-2,device_version=v2.3,load_capacity=1500,fuel_capacity=150,nominal_fuel_consumption=12 latitude=52.31854,longitude=4.72037,elevation=124,velocity=0,heading=221,grade=0,fuel_consumption=25 1451606400000000000
//! diagnostics,name=truck_0,fleet=South,driver=Trish,model=H-2,device_version=v2.3,load_capacity=1500,fuel_capacity=150,nominal_fuel_consumption=12 fuel_state=1,current_load=0,status=0i 1451606400000000000
//! ```
//!
//! Irregularities ([`Irregularities::TSBS`]), decided per line from their own ChaCha stream:
//! - missing: a run of [`GROUP_LINES`] consecutive lines is dropped with TSBS's batch chance
//!   (1 %), and any line with TSBS's entry chance (10 %): a truck skips a reading;
//! - null fields: 10 % of lines lack one field (TSBS clears a field value);
//! - cleared tags: 1 % of lines lack one tag, so they land in a different series, as in TSBS;
//!   never `name`, which alone tells trucks apart: two trucks without it could share a series
//!   and a time, and InfluxDB keeps only the last of such lines where every other store keeps
//!   both (at 10M rows that made InfluxDB's answers differ by a few rows);
//! - out of order: 5 % of lines are held back and written 1 to [`DELAY_STEPS_MAX`] steps late,
//!   after that step's lines. TSBS instead shuffles lines a few positions within the stream,
//!   which with many trucks almost never reorders a series; holding whole steps back makes the
//!   late rows real out-of-order writes for each series, which is what a server must handle.
//!
//! Determinism: the bytes depend only on the [`IotConfig`]: each truck has its own ChaCha8
//! stream (so truck 0 is the same whatever the fleet size), and no libm function is used.

mod truck;

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use truck::{below, unit, Table, Truck, DIAGNOSTICS_FIELDS, FIELD_COUNTS, READINGS_FIELDS};

pub use truck::TAG_KEYS;

/// TSBS's default start: 2016-01-01T00:00:00Z, in nanoseconds.
pub const START_DEFAULT_NS: i64 = 1_451_606_400_000_000_000;
/// TSBS's `iot` log interval: 10 s.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// A late line is written at most this many steps after its own.
pub const DELAY_STEPS_MAX: u64 = 3;
/// Lines per group for TSBS's batch-level "missing" chance (its `defaultBatchSize`).
pub const GROUP_LINES: u64 = 10;
/// Upper bound on the fleet, so a typo cannot ask for terabytes.
pub const TRUCKS_MAX: u32 = 1_000_000;
/// Upper bound on lines per run (before irregularities), about 2.5 TB of line protocol.
pub const ENTRIES_MAX: u64 = 10_000_000_000;
/// Stream id of the irregularity decisions; truck streams are their index.
const IRREGULARITY_STREAM: u64 = u64::MAX;
const RING: usize = DELAY_STEPS_MAX as usize + 1;

/// Type of a field column as the generator writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A float (`1.5`, `231`): no suffix in line protocol.
    Float,
    /// A signed integer (`3i`).
    Integer,
}

/// The columns one table can have. Every line carries `time`; a line may lack any one tag
/// (a cleared tag) or field (a null field), so no tag or field column is ever complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableColumns {
    pub table: &'static str,
    /// [`TAG_KEYS`]: the same for both tables.
    pub tags: &'static [&'static str],
    /// Field names and types, in TSBS's order.
    pub fields: &'static [(&'static str, FieldType)],
}

/// `readings` fields: seven floats.
const READINGS_COLUMNS: [(&str, FieldType); READINGS_FIELDS.len()] = {
    let mut cols = [("", FieldType::Float); READINGS_FIELDS.len()];
    let mut i = 0;
    while i < READINGS_FIELDS.len() {
        cols[i].0 = READINGS_FIELDS[i];
        i += 1;
    }
    cols
};

/// `diagnostics` fields: two floats and the integer `status`.
const DIAGNOSTICS_COLUMNS: [(&str, FieldType); 3] = [
    (DIAGNOSTICS_FIELDS[0], FieldType::Float),
    (DIAGNOSTICS_FIELDS[1], FieldType::Float),
    (DIAGNOSTICS_FIELDS[2], FieldType::Integer),
];

/// Every table of the `iot` use case and every column it can have, in the order lines are
/// written (`readings`, then `diagnostics`).
pub const TABLES: [TableColumns; 2] = [
    TableColumns {
        table: "readings",
        tags: &TAG_KEYS,
        fields: &READINGS_COLUMNS,
    },
    TableColumns {
        table: "diagnostics",
        tags: &TAG_KEYS,
        fields: &DIAGNOSTICS_COLUMNS,
    },
];

/// Errors of the generator's configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenError {
    #[error("--trucks must be between 1 and {TRUCKS_MAX}, got {0}")]
    Trucks(u64),
    #[error("duration {0:?} is shorter than one interval ({1:?}): no rows to generate")]
    TooShort(Duration, Duration),
    #[error(
        "{0} lines requested, more than the limit of {ENTRIES_MAX}; lower --trucks or --duration"
    )]
    TooLarge(u64),
    #[error("invalid duration {0:?}: expected e.g. 90s, 30m, 6h, 1d or 1h30m")]
    Duration(String),
}

/// How irregular the stream is; each field is a probability in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Irregularities {
    /// A whole group of [`GROUP_LINES`] lines is missing.
    pub missing_group: f64,
    /// One line is missing.
    pub missing_line: f64,
    /// A line is written 1..=[`DELAY_STEPS_MAX`] steps late.
    pub late_line: f64,
    /// A line lacks one of its fields.
    pub null_field: f64,
    /// A line lacks one of its tags (any but `name`).
    pub cleared_tag: f64,
}

impl Irregularities {
    /// TSBS's chances (`batch_config.go`), plus our own out-of-order rule (see module doc).
    pub const TSBS: Self = Self {
        missing_group: 0.01,
        missing_line: 0.10,
        late_line: 0.05,
        null_field: 0.10,
        cleared_tag: 0.01,
    };
    /// A perfectly regular stream: every truck, every step, every field, in order.
    pub const NONE: Self = Self {
        missing_group: 0.0,
        missing_line: 0.0,
        late_line: 0.0,
        null_field: 0.0,
        cleared_tag: 0.0,
    };
}

/// What to generate: the scale is `trucks × steps`, two lines per truck and step.
#[derive(Debug, Clone, PartialEq)]
pub struct IotConfig {
    pub trucks: u32,
    pub steps: u64,
    pub start_ns: i64,
    pub interval_ns: i64,
    pub seed: u64,
    pub irregularities: Irregularities,
}

impl IotConfig {
    /// `trucks` over `duration` at TSBS's 10 s interval, starting 2016-01-01, TSBS irregularities.
    pub fn new(trucks: u64, duration: Duration, seed: u64) -> Result<Self, GenError> {
        if trucks == 0 || trucks > u64::from(TRUCKS_MAX) {
            return Err(GenError::Trucks(trucks));
        }
        let steps = (duration.as_nanos() / INTERVAL_DEFAULT.as_nanos()) as u64;
        if steps == 0 {
            return Err(GenError::TooShort(duration, INTERVAL_DEFAULT));
        }
        let entries = trucks.saturating_mul(steps).saturating_mul(2);
        if entries > ENTRIES_MAX {
            return Err(GenError::TooLarge(entries));
        }
        Ok(Self {
            trucks: trucks as u32,
            steps,
            start_ns: START_DEFAULT_NS,
            interval_ns: INTERVAL_DEFAULT.as_nanos() as i64,
            seed,
            irregularities: Irregularities::TSBS,
        })
    }

    /// Lines before irregularities: `trucks × steps × 2`.
    pub fn entries(&self) -> u64 {
        u64::from(self.trucks) * self.steps * 2
    }

    pub fn generator(&self) -> IotGenerator {
        IotGenerator::new(self.clone())
    }

    /// The stream cut into bodies of at most `batch_lines` lines each.
    pub fn batches(&self, batch_lines: usize) -> Batches {
        assert!(batch_lines > 0, "batch_lines must be positive");
        Batches {
            gen: self.generator(),
            batch_lines,
        }
    }
}

/// Counters of one generation run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Line slots visited: `trucks × steps × 2` once finished.
    pub entries: u64,
    /// Lines written (on time or late); `entries - missing` once finished.
    pub emitted: u64,
    pub missing: u64,
    /// Lines held back and written late.
    pub late: u64,
    pub null_fields: u64,
    pub cleared_tags: u64,
}

/// Streaming generator; memory is the trucks plus the late lines of [`DELAY_STEPS_MAX`] steps.
#[derive(Debug)]
pub struct IotGenerator {
    cfg: IotConfig,
    trucks: Vec<Truck>,
    rng: ChaCha8Rng,
    step: u64,
    truck: u32,
    table: Table,
    group_missing: bool,
    /// `late[s % RING]`: lines (each ending in `\n`) to write at the end of step `s`.
    late: [Vec<u8>; RING],
    /// Bucket being written out and the offset of its next line.
    draining: Option<(usize, usize)>,
    stats: GenStats,
}

impl IotGenerator {
    pub fn new(cfg: IotConfig) -> Self {
        let trucks = (0..cfg.trucks).map(|i| Truck::new(cfg.seed, i)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(IRREGULARITY_STREAM);
        Self {
            cfg,
            trucks,
            rng,
            step: 0,
            truck: 0,
            table: Table::Readings,
            group_missing: false,
            late: Default::default(),
            draining: None,
            stats: GenStats::default(),
        }
    }

    pub fn config(&self) -> &IotConfig {
        &self.cfg
    }

    pub fn stats(&self) -> GenStats {
        self.stats
    }

    /// Appends the next line (with its `\n`) to `out`; false once the stream is over.
    pub fn next_line(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            if let Some((bucket, offset)) = self.draining {
                let buf = &self.late[bucket];
                if offset < buf.len() {
                    let len = buf[offset..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .expect("late lines end in a newline")
                        + 1;
                    out.extend_from_slice(&buf[offset..offset + len]);
                    self.draining = Some((bucket, offset + len));
                    self.stats.emitted += 1;
                    return true;
                }
                self.late[bucket].clear();
                self.draining = None;
            }
            if self.step >= self.cfg.steps {
                // Past the last step only late lines remain.
                if self.step >= self.cfg.steps + DELAY_STEPS_MAX {
                    debug_assert!(self.late.iter().all(Vec::is_empty));
                    return false;
                }
                self.draining = Some((self.step as usize % RING, 0));
                self.step += 1;
                continue;
            }
            let written = self.entry(out);
            self.advance();
            if written {
                self.stats.emitted += 1;
                return true;
            }
        }
    }

    /// Appends up to `lines_max` lines to `out`; returns how many (0 once over).
    pub fn fill(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize {
        let mut n = 0;
        while n < lines_max && self.next_line(out) {
            n += 1;
        }
        n
    }

    /// Line at the current (step, truck, table); true if written to `out` now.
    fn entry(&mut self, out: &mut Vec<u8>) -> bool {
        let irr = self.cfg.irregularities;
        if self.stats.entries.is_multiple_of(GROUP_LINES) {
            self.group_missing = unit(&mut self.rng) < irr.missing_group;
        }
        self.stats.entries += 1;
        // A fixed number of draws per line keeps the stream aligned whatever is decided.
        let missing = unit(&mut self.rng) < irr.missing_line;
        let late = unit(&mut self.rng) < irr.late_line;
        let delay = 1 + below(&mut self.rng, DELAY_STEPS_MAX as usize) as u64;
        let null = unit(&mut self.rng) < irr.null_field;
        let null_index = below(&mut self.rng, FIELD_COUNTS[self.table as usize] as usize);
        let cleared = unit(&mut self.rng) < irr.cleared_tag;
        // Never `name` (index 0): see the module documentation.
        let tag_index = 1 + below(&mut self.rng, TAG_KEYS.len() - 1);

        if self.group_missing || missing {
            self.stats.missing += 1;
            return false;
        }
        let null_field = null.then_some(null_index as u32);
        let cleared_tag = cleared.then_some(tag_index as u32);
        self.stats.null_fields += u64::from(null);
        self.stats.cleared_tags += u64::from(cleared);
        let ts = self.cfg.start_ns + self.step as i64 * self.cfg.interval_ns;
        let truck = &self.trucks[self.truck as usize];
        if late {
            let bucket = &mut self.late[((self.step + delay) % RING as u64) as usize];
            truck.write_line(bucket, self.table, ts, null_field, cleared_tag);
            self.stats.late += 1;
            false
        } else {
            truck.write_line(out, self.table, ts, null_field, cleared_tag);
            true
        }
    }

    /// Moves to the next slot; ticks a truck after its last table, drains late lines after
    /// the last truck of a step.
    fn advance(&mut self) {
        if self.table == Table::Readings {
            self.table = Table::Diagnostics;
            return;
        }
        self.table = Table::Readings;
        self.trucks[self.truck as usize].tick();
        self.truck += 1;
        if self.truck == self.cfg.trucks {
            self.truck = 0;
            self.draining = Some((self.step as usize % RING, 0));
            self.step += 1;
        }
    }
}

/// Line-protocol bodies of up to `batch_lines` lines.
#[derive(Debug)]
pub struct Batches {
    gen: IotGenerator,
    batch_lines: usize,
}

impl Batches {
    pub fn stats(&self) -> GenStats {
        self.gen.stats()
    }
}

/// One request body: whole lines, each ending in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineBatch {
    pub body: Vec<u8>,
    pub lines: usize,
}

impl Iterator for Batches {
    type Item = LineBatch;

    fn next(&mut self) -> Option<LineBatch> {
        // ~230 bytes per line on average.
        let mut body = Vec::with_capacity(self.batch_lines.min(1 << 16) * 240);
        let lines = self.gen.fill(&mut body, self.batch_lines);
        (lines > 0).then_some(LineBatch { body, lines })
    }
}

/// Parses `90s`, `30m`, `6h`, `1d`, `1h30m` (units s, m, h, d; integers).
pub fn parse_duration(s: &str) -> Result<Duration, GenError> {
    let err = || GenError::Duration(s.to_owned());
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests;
