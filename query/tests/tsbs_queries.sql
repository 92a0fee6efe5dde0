-- TSBS-iot queries over the tables `readings` and `diagnostics` written by the annals-bench
-- generator (benches/src/tsbs): tags name, fleet, driver, model, device_version,
-- load_capacity, fuel_capacity, nominal_fuel_consumption (strings); readings fields latitude,
-- longitude, elevation, velocity, heading, grade, fuel_consumption (floats); diagnostics fields
-- fuel_state, current_load (floats) and status (integer).
--
-- One query per `-- name: <id>` header, up to the next header. The SQL is portable: annals
-- (DataFusion) and DuckDB run the same text. DuckDB has no `date_bin`, so its side defines
-- `date_bin(stride, source, origin)` as a macro over `time_bucket` (query/tests/duckdb_tsbs.py).
-- Every query orders its rows by a unique key, so results compare row by row. Rows whose tag
-- was cleared by the generator (TSBS drops a tag now and then) are excluded where the tag is
-- a key. Used by query/tests/duckdb_tsbs.rs; benchmarks can read this file too.
--
-- Thresholds: TSBS calls a truck stationary below an average velocity of 1 and driving above 1.
-- The generator's velocity walks up to 10 per 10 s step (clamped at 0), so a 10-minute average
-- below 1 hardly ever happens (under 1 % of windows average below 5) and nearly every window
-- is "driving"; the thresholds here (10 and 50) keep the same query shapes but select a
-- fraction of the windows, so the results discriminate.

-- name: last_location
-- Last known position of each truck of one fleet.
SELECT name, driver, latitude, longitude, time
FROM (
  SELECT name, driver, latitude, longitude, time,
         row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
  FROM readings
  WHERE fleet = 'South' AND name IS NOT NULL
) AS latest
WHERE rn = 1
ORDER BY name

-- name: low_fuel
-- Trucks that ran low on fuel (below 10 %), with their latest low reading.
SELECT name, driver, fleet, fuel_state, time
FROM (
  SELECT name, driver, fleet, fuel_state, time,
         row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
  FROM diagnostics
  WHERE name IS NOT NULL AND fuel_state < 0.1
) AS latest
WHERE rn = 1
ORDER BY name

-- name: high_load
-- Trucks whose latest load is above 90 % of their capacity.
SELECT name, driver, current_load, capacity, current_load / capacity AS load_fraction, time
FROM (
  SELECT name, driver, current_load, CAST(load_capacity AS DOUBLE) AS capacity, time,
         row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
  FROM diagnostics
  WHERE name IS NOT NULL AND current_load IS NOT NULL AND load_capacity IS NOT NULL
) AS latest
WHERE rn = 1 AND current_load / capacity > 0.9
ORDER BY name

-- name: stationary_trucks
-- 10-minute windows in which a truck's average velocity was below 10 (stationary or crawling).
SELECT name, date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00') AS window_start,
       avg(velocity) AS mean_velocity, count(velocity) AS readings
FROM readings
WHERE name IS NOT NULL AND velocity IS NOT NULL
GROUP BY name, date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00')
HAVING avg(velocity) < 10
ORDER BY name, window_start

-- name: long_driving_sessions
-- Trucks that drove fast (average velocity above 50) in more than 15 ten-minute windows.
SELECT name, count(*) AS driving_windows, min(window_start) AS first_window
FROM (
  SELECT name, date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00') AS window_start
  FROM readings
  WHERE name IS NOT NULL
  GROUP BY name, date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00')
  HAVING avg(velocity) > 50
) AS driving
GROUP BY name
HAVING count(*) > 15
ORDER BY name

-- name: average_load
-- Average load, as a fraction of capacity, per fleet, model and capacity.
SELECT fleet, model, CAST(load_capacity AS DOUBLE) AS capacity,
       avg(current_load / CAST(load_capacity AS DOUBLE)) AS mean_load_fraction,
       count(current_load) AS readings
FROM diagnostics
WHERE fleet IS NOT NULL AND model IS NOT NULL AND load_capacity IS NOT NULL
GROUP BY fleet, model, load_capacity
ORDER BY fleet, model, capacity

-- name: daily_activity
-- Per fleet, model and day: the fraction of truck 10-minute windows in which the truck was
-- active (average status below 1).
SELECT fleet, model, day,
       sum(CASE WHEN mean_status < 1 THEN 1 ELSE 0 END) AS active_windows,
       count(*) AS windows,
       CAST(sum(CASE WHEN mean_status < 1 THEN 1 ELSE 0 END) AS DOUBLE) / count(*) AS active_fraction
FROM (
  SELECT name, fleet, model, date_trunc('day', time) AS day,
         date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00') AS window_start,
         avg(status) AS mean_status
  FROM diagnostics
  WHERE name IS NOT NULL AND fleet IS NOT NULL AND model IS NOT NULL
  GROUP BY name, fleet, model, date_trunc('day', time),
           date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00')
) AS per_window
GROUP BY fleet, model, day
ORDER BY fleet, model, day

-- name: breakdown_frequency
-- Breakdowns per model: a truck is broken down in a 10-minute window when at least half of
-- its statuses there are 0; a breakdown is a window broken down after one that was not.
WITH per_window AS (
  SELECT name, model,
         date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00') AS window_start,
         CAST(sum(CASE WHEN status = 0 THEN 1 ELSE 0 END) AS DOUBLE) / count(*) >= 0.5 AS broken_down
  FROM diagnostics
  WHERE name IS NOT NULL AND model IS NOT NULL AND status IS NOT NULL
  GROUP BY name, model, date_bin(INTERVAL '10 minutes', time, TIMESTAMP '2016-01-01 00:00:00')
), changes AS (
  SELECT name, model, window_start, broken_down,
         lag(broken_down) OVER (PARTITION BY name, model ORDER BY window_start) AS was_broken_down
  FROM per_window
)
SELECT model, count(*) AS breakdowns, count(DISTINCT name) AS trucks
FROM changes
WHERE broken_down AND NOT was_broken_down
GROUP BY model
ORDER BY model
