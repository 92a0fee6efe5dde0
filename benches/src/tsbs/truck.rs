//! One simulated truck: its tags and the random walks behind its `readings` and `diagnostics`.
//!
//! Shapes follow TSBS's `iot` use case (`pkg/data/usecases/iot`): clamped random walks with the
//! same bounds, steps and printed precision. The arithmetic is kept portable on purpose: values
//! come from ChaCha8 through integer-to-float conversion, `+ - * /`, `round` and `sqrt` only (all
//! exactly specified by IEEE 754), never `ln`/`cos` from the platform's libm, so a seed gives the
//! same bytes on every machine.

use std::io::Write as _;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Tag keys in the order TSBS writes them.
pub const TAG_KEYS: [&str; 8] = [
    "name",
    "fleet",
    "driver",
    "model",
    "device_version",
    "load_capacity",
    "fuel_capacity",
    "nominal_fuel_consumption",
];

const FLEETS: [&str; 4] = ["East", "West", "North", "South"];
const DRIVERS: [&str; 6] = ["Derek", "Rodney", "Albert", "Andy", "Seth", "Trish"];
const DEVICE_VERSIONS: [&str; 4] = ["v1.0", "v1.5", "v2.0", "v2.3"];

/// A truck model with its capacities; in TSBS these are tags, printed as plain numbers.
struct Model {
    name: &'static str,
    load_capacity: &'static str,
    fuel_capacity: &'static str,
    nominal_fuel_consumption: &'static str,
}

const MODELS: [Model; 3] = [
    Model {
        name: "F-150",
        load_capacity: "2000",
        fuel_capacity: "200",
        nominal_fuel_consumption: "15",
    },
    Model {
        name: "G-2000",
        load_capacity: "5000",
        fuel_capacity: "300",
        nominal_fuel_consumption: "19",
    },
    Model {
        name: "H-2",
        load_capacity: "1500",
        fuel_capacity: "150",
        nominal_fuel_consumption: "12",
    },
];

/// A clamped random walk with a uniform step in `[-step, step]`.
struct Walk {
    field: &'static str,
    step: f64,
    min: f64,
    max: f64,
    /// Decimal places printed (TSBS's `FP` wrapper).
    precision: i32,
}

/// `readings` fields, in TSBS's order.
const READINGS: [Walk; 7] = [
    Walk {
        field: "latitude",
        step: 0.005,
        min: -90.0,
        max: 90.0,
        precision: 5,
    },
    Walk {
        field: "longitude",
        step: 0.005,
        min: -180.0,
        max: 180.0,
        precision: 5,
    },
    Walk {
        field: "elevation",
        step: 10.0,
        min: 0.0,
        max: 5000.0,
        precision: 0,
    },
    Walk {
        field: "velocity",
        step: 10.0,
        min: 0.0,
        max: 100.0,
        precision: 0,
    },
    Walk {
        field: "heading",
        step: 5.0,
        min: 0.0,
        max: 360.0,
        precision: 0,
    },
    Walk {
        field: "grade",
        step: 5.0,
        min: 0.0,
        max: 100.0,
        precision: 0,
    },
    Walk {
        field: "fuel_consumption",
        step: 5.0,
        min: 0.0,
        max: 50.0,
        precision: 1,
    },
];

/// `readings` field names, in TSBS's order (all floats).
pub(crate) const READINGS_FIELDS: [&str; READINGS.len()] = {
    let mut names = [""; READINGS.len()];
    let mut i = 0;
    while i < READINGS.len() {
        names[i] = READINGS[i].field;
        i += 1;
    }
    names
};

/// `diagnostics` field names, in TSBS's order: two floats, then the integer `status`.
pub(crate) const DIAGNOSTICS_FIELDS: [&str; 3] = ["fuel_state", "current_load", "status"];

/// Number of fields of each table, indexed by [`Table`].
pub(crate) const FIELD_COUNTS: [u32; 2] = [
    READINGS_FIELDS.len() as u32,
    DIAGNOSTICS_FIELDS.len() as u32,
];

const LOAD_MAX: f64 = 5000.0;
/// Chance per step that a truck's load changes (TSBS's `loadChangeChance`).
const LOAD_CHANGE_CHANCE: f64 = 0.05;
const FUEL_STEP_MAX: f64 = 0.001;
const STATUS_MAX: f64 = 5.0;

/// The two tables of the `iot` use case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Readings = 0,
    Diagnostics = 1,
}

#[derive(Debug)]
pub(crate) struct Truck {
    rng: ChaCha8Rng,
    tag_values: [&'static str; 8],
    name: String,
    /// `,name=truck_0,fleet=...` ready to append after the measurement name.
    tags_rendered: Vec<u8>,
    readings: [f64; 7],
    fuel_state: f64,
    current_load: f64,
    status: f64,
}

impl Truck {
    /// Truck `index` of a run seeded with `seed`: its own ChaCha stream, so trucks do not
    /// depend on each other and adding trucks does not change the first ones.
    pub(crate) fn new(seed: u64, index: u32) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::from(index));
        let model = &MODELS[below(&mut rng, MODELS.len())];
        let fleet = FLEETS[below(&mut rng, FLEETS.len())];
        let driver = DRIVERS[below(&mut rng, DRIVERS.len())];
        let device = DEVICE_VERSIONS[below(&mut rng, DEVICE_VERSIONS.len())];
        let readings = [
            unit(&mut rng) * 90.0,
            unit(&mut rng) * 180.0,
            unit(&mut rng) * 500.0,
            0.0,
            unit(&mut rng) * 360.0,
            0.0,
            25.0,
        ];
        let mut truck = Self {
            rng,
            tag_values: [
                "",
                fleet,
                driver,
                model.name,
                device,
                model.load_capacity,
                model.fuel_capacity,
                model.nominal_fuel_consumption,
            ],
            name: format!("truck_{index}"),
            tags_rendered: Vec::new(),
            readings,
            fuel_state: 1.0,
            current_load: 0.0,
            status: 0.0,
        };
        let mut rendered = Vec::with_capacity(160);
        truck.write_tags(&mut rendered, None);
        truck.tags_rendered = rendered;
        truck
    }

    fn tag_value(&self, i: usize) -> &str {
        if i == 0 {
            &self.name
        } else {
            self.tag_values[i]
        }
    }

    /// Appends `,k=v` for every tag except `skip` (TSBS drops a tag whose value was cleared).
    fn write_tags(&self, out: &mut Vec<u8>, skip: Option<usize>) {
        for (i, key) in TAG_KEYS.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            out.push(b',');
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            out.extend_from_slice(self.tag_value(i).as_bytes());
        }
    }

    /// Appends one line of `table` at `ts_ns`, without the field `null_field` and the tag
    /// `cleared_tag` when given (indices are reduced modulo the counts).
    pub(crate) fn write_line(
        &self,
        out: &mut Vec<u8>,
        table: Table,
        ts_ns: i64,
        null_field: Option<u32>,
        cleared_tag: Option<u32>,
    ) {
        let start = out.len();
        out.extend_from_slice(super::TABLES[table as usize].table.as_bytes());
        match cleared_tag {
            None => out.extend_from_slice(&self.tags_rendered),
            Some(t) => self.write_tags(out, Some(t as usize % TAG_KEYS.len())),
        }
        let skip = null_field.map(|f| f % FIELD_COUNTS[table as usize]);
        let mut sep = b' ';
        let mut field = |out: &mut Vec<u8>, i: u32, name: &str| {
            if Some(i) == skip {
                return false;
            }
            out.push(sep);
            sep = b',';
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            true
        };
        match table {
            Table::Readings => {
                for (i, walk) in READINGS.iter().enumerate() {
                    if field(out, i as u32, walk.field) {
                        write_f64(out, round_to(self.readings[i], walk.precision));
                    }
                }
            }
            Table::Diagnostics => {
                let [fuel_state, current_load, status] = DIAGNOSTICS_FIELDS;
                if field(out, 0, fuel_state) {
                    write_f64(out, round_to(self.fuel_state, 1));
                }
                if field(out, 1, current_load) {
                    write_f64(out, round_to(self.current_load, 0));
                }
                if field(out, 2, status) {
                    // Infallible: writing into a Vec.
                    let _ = write!(out, "{}i", self.status.round() as i64);
                }
            }
        }
        let _ = writeln!(out, " {ts_ns}");
        debug_assert!(out[start..].iter().filter(|&&b| b == b' ').count() == 2);
    }

    /// Advances every walk by one interval (TSBS's `TickAll`).
    pub(crate) fn tick(&mut self) {
        for (state, walk) in self.readings.iter_mut().zip(READINGS.iter()) {
            let step = uniform(&mut self.rng, -walk.step, walk.step);
            *state = (*state + step).clamp(walk.min, walk.max);
        }
        // Fuel only goes down, and the truck refuels when empty.
        let burn = uniform(&mut self.rng, -FUEL_STEP_MAX, 0.0);
        self.fuel_state = (self.fuel_state + burn).clamp(0.0, 1.0);
        if self.fuel_state == 0.0 {
            self.fuel_state = 1.0;
        }
        // The load stays put most of the time, then jumps to a new value.
        if unit(&mut self.rng) < LOAD_CHANGE_CHANCE {
            self.current_load = uniform(&mut self.rng, 0.0, LOAD_MAX);
        }
        self.status = (self.status + normal(&mut self.rng)).clamp(0.0, STATUS_MAX);
    }
}

/// Uniform in `[0, 1)` with 53 random bits.
pub(crate) fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn uniform(rng: &mut impl RngCore, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit(rng)
}

/// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for our small `n`).
pub(crate) fn below(rng: &mut impl RngCore, n: usize) -> usize {
    (((rng.next_u64() >> 32) * n as u64) >> 32) as usize
}

/// Approximately standard normal: the centred sum of four uniforms scaled to unit variance.
/// Portable (no libm) and close enough for a status walk.
fn normal(rng: &mut impl RngCore) -> f64 {
    let sum: f64 = (0..4).map(|_| unit(rng)).sum();
    (sum - 2.0) * 3.0_f64.sqrt()
}

fn round_to(x: f64, precision: i32) -> f64 {
    let scale = 10f64.powi(precision);
    let r = (x * scale).round() / scale;
    // Never print "-0".
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// Shortest round-trip form, as Go's `strconv.FormatFloat(v, 'f', -1, 64)` prints for TSBS:
/// `124`, `52.31854`.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    debug_assert!(v.is_finite());
    let _ = write!(out, "{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_tsbs() {
        let mut out = Vec::new();
        write_f64(&mut out, round_to(124.4, 0));
        out.push(b' ');
        write_f64(&mut out, round_to(52.318_544_9, 5));
        out.push(b' ');
        write_f64(&mut out, round_to(-0.000_001, 5));
        assert_eq!(out, b"124 52.31854 0");
    }

    #[test]
    fn walks_stay_in_bounds() {
        let mut truck = Truck::new(7, 3);
        for _ in 0..20_000 {
            truck.tick();
            for (v, w) in truck.readings.iter().zip(READINGS.iter()) {
                assert!((w.min..=w.max).contains(v), "{} = {v}", w.field);
            }
            assert!(truck.fuel_state > 0.0 && truck.fuel_state <= 1.0);
            assert!((0.0..=LOAD_MAX).contains(&truck.current_load));
            assert!((0.0..=STATUS_MAX).contains(&truck.status));
        }
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
    }
}
